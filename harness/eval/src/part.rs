//! Parts of the work: a run or experiment split into shards, for job arrays.

use serde::{Deserialize, Serialize};

use crate::EvalError;

/// Part `index` of `count`, numbered from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

fn env_number(name: &str) -> Result<Option<usize>, EvalError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| EvalError::Spec {
            field: format!("${name}"),
            reason: format!("`{v}` is not a number"),
        }),
    }
}

impl Part {
    /// A part, checked: the index must be below the count.
    pub fn new(index: usize, count: usize) -> Result<Part, EvalError> {
        if count == 0 || index >= count {
            return Err(EvalError::Spec {
                field: "shard".into(),
                reason: format!("{index}/{count}: the index must be below the count, from 0"),
            });
        }
        Ok(Part { index, count })
    }

    /// `I/N`; `auto` from a Slurm job array (`SLURM_ARRAY_TASK_ID` less
    /// `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`); `auto/N` from a
    /// Kubernetes Indexed Job's `JOB_COMPLETION_INDEX`, or Slurm's when set.
    pub fn parse(text: &str) -> Result<Part, EvalError> {
        let bad = |reason: &str| EvalError::Spec {
            field: format!("shard `{text}`"),
            reason: reason.into(),
        };
        let (index, count) = text
            .split_once('/')
            .map(|(i, n)| (i, Some(n)))
            .unwrap_or((text, None));
        let count: Option<usize> = count
            .map(|n| n.parse().map_err(|_| bad("expected I/N, auto or auto/N")))
            .transpose()?;
        if index != "auto" {
            let index = index
                .parse()
                .map_err(|_| bad("expected I/N, auto or auto/N"))?;
            let count = count.ok_or_else(|| bad("expected I/N, auto or auto/N"))?;
            return Part::new(index, count);
        }
        if let Some(id) = env_number("SLURM_ARRAY_TASK_ID")? {
            let min = env_number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let n = env_number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                bad("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
            })?;
            if count.is_some_and(|c| c != n) {
                return Err(bad("the count differs from SLURM_ARRAY_TASK_COUNT"));
            }
            return Part::new(id.saturating_sub(min), n);
        }
        if let Some(i) = env_number("JOB_COMPLETION_INDEX")? {
            let n = count.ok_or_else(|| bad("JOB_COMPLETION_INDEX needs the count: auto/N"))?;
            return Part::new(i, n);
        }
        Err(bad(
            "no job-array variables (SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX) are set",
        ))
    }
}

/// The part each unit of work goes to: units by falling cost, each to the
/// part with the least cost so far (ties to the lower part), so every part
/// gets about the same expected tokens and every machine computes the same split.
pub fn assign(costs: &[u64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by_key(|&u| (std::cmp::Reverse(costs[u]), u));
    let mut load = vec![0u64; count];
    let mut part = vec![0; costs.len()];
    for u in order {
        let least = (0..count)
            .min_by_key(|&p| (load[p], p))
            .expect("at least one part");
        load[least] += costs[u];
        part[u] = least;
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_balance_cost_and_cover_every_unit_once() {
        let costs = [90, 10, 40, 40, 30, 30, 20, 20];
        let parts = assign(&costs, 3);
        let mut load = [0u64; 3];
        for (u, &p) in parts.iter().enumerate() {
            load[p] += costs[u];
        }
        assert_eq!(load.iter().sum::<u64>(), costs.iter().sum::<u64>());
        let (lo, hi) = (load.iter().min().unwrap(), load.iter().max().unwrap());
        assert!(hi - lo <= 20, "{load:?}");
        assert_eq!(parts, assign(&costs, 3));
    }

    #[test]
    fn shard_text_is_checked() {
        assert_eq!(Part::parse("2/4").unwrap(), Part { index: 2, count: 4 });
        for bad in ["4/4", "1/0", "x/2", "3"] {
            assert!(Part::parse(bad).is_err(), "{bad}");
        }
    }
}
