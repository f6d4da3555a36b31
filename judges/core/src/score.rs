//! 0–100 scores from a judge's distribution over its first answer token.

use serde::{Deserialize, Serialize};

/// Below this probability mass on integer answers 0..=100 the score is null.
pub const MIN_MASS: f64 = 0.25;

/// One of the judge's most likely first tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopToken {
    pub token: String,
    pub logprob: f64,
}

/// Why a judgment has no score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "token")]
pub enum NullReason {
    /// The judge preferred to answer REFUSAL.
    Refusal,
    /// The judge preferred to answer CODE.
    Code,
    /// The judge preferred something else: the token it liked best.
    Other(String),
}

/// A scored (or null) judgment with the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgment {
    /// Σ p·n / Σ p over integer answers n in 0..=100; `None` when the mass is too low.
    pub score: Option<f64>,
    /// Σ p over integer answers 0..=100.
    pub mass: f64,
    pub null_reason: Option<NullReason>,
    /// The raw distribution the score came from.
    pub top: Vec<TopToken>,
}

/// The integer a token stands for, read as Python's `int()` reads a string
/// (surrounding whitespace, an optional sign, digits with single `_`
/// between them), since that is how the reference code parses judge tokens.
fn python_int(token: &str) -> Option<i64> {
    let t = token.trim();
    let (negative, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let mut value: i64 = 0;
    for c in digits.chars() {
        match c {
            '_' => {}
            '0'..='9' => value = value.checked_mul(10)?.checked_add(c as i64 - '0' as i64)?,
            _ => return None,
        }
    }
    Some(if negative { -value } else { value })
}

impl NullReason {
    /// The reason for a judge that preferred `answer` to any number.
    pub fn preferred(answer: &str) -> Self {
        let a = answer.trim();
        match a.to_uppercase().as_str() {
            "REFUSAL" => NullReason::Refusal,
            "CODE" => NullReason::Code,
            _ => NullReason::Other(a.to_string()),
        }
    }
}

impl Judgment {
    /// A judgment from the exact probability of each answer 0..=100
    /// (`probs[n]`), as a local judge computes them; `preferred` is the
    /// judge's most likely first token, the reason when the mass is too low.
    ///
    /// Below `min_mass` on numbers the judgment is null (the reference rule
    /// is [`MIN_MASS`]); with `min_mass` 0 the score is the expected answer
    /// conditional on a numeric one, null only when no number has any mass.
    pub fn from_number_probs(probs: &[f64], preferred: &str, min_mass: f64) -> Judgment {
        let mass: f64 = probs.iter().sum();
        let weighted: f64 = probs.iter().enumerate().map(|(n, p)| n as f64 * p).sum();
        let mut top: Vec<TopToken> = probs
            .iter()
            .enumerate()
            .map(|(n, &p)| TopToken {
                token: n.to_string(),
                logprob: p.ln(),
            })
            .collect();
        top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
        top.truncate(20);
        let low = mass < min_mass || mass <= 0.0;
        Judgment {
            score: (!low).then(|| weighted / mass),
            mass,
            null_reason: low.then(|| NullReason::preferred(preferred)),
            top,
        }
    }
}

/// Scores a judge's top first tokens.
///
/// When the same string appears more than once, the later entry wins, as in
/// the reference code's `{token: prob}` dictionary.
pub fn aggregate(top: Vec<TopToken>) -> Judgment {
    let mut probs: Vec<(&str, f64)> = Vec::with_capacity(top.len());
    for t in &top {
        let p = t.logprob.exp();
        match probs.iter_mut().find(|(s, _)| *s == t.token) {
            Some(entry) => entry.1 = p,
            None => probs.push((&t.token, p)),
        }
    }
    let (mut mass, mut weighted) = (0.0, 0.0);
    for &(token, p) in &probs {
        if let Some(n) = python_int(token).filter(|n| (0..=100).contains(n)) {
            mass += p;
            weighted += p * n as f64;
        }
    }
    let (score, null_reason) = if mass < MIN_MASS {
        let best = probs
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(t, _)| *t)
            .unwrap_or_default();
        (None, Some(NullReason::preferred(best)))
    } else {
        (Some(weighted / mass), None)
    };
    Judgment {
        score,
        mass,
        null_reason,
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(pairs: &[(&str, f64)]) -> Vec<TopToken> {
        pairs
            .iter()
            .map(|&(t, p)| TopToken {
                token: t.into(),
                logprob: p.ln(),
            })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn weighted_mean_over_integer_tokens() {
        let j = aggregate(top(&[("80", 0.5), ("90", 0.3), ("hello", 0.2)]));
        assert!(close(j.mass, 0.8));
        assert!(close(j.score.unwrap(), (0.5 * 80.0 + 0.3 * 90.0) / 0.8));
        assert_eq!(j.null_reason, None);
    }

    #[test]
    fn tokens_parse_as_python_int_does() {
        assert_eq!(python_int(" 85"), Some(85));
        assert_eq!(python_int("085"), Some(85));
        assert_eq!(python_int("100"), Some(100));
        assert_eq!(python_int("-5"), Some(-5));
        assert_eq!(python_int("1_0"), Some(10));
        assert_eq!(python_int("8.5"), None);
        assert_eq!(python_int("_1"), None);
        assert_eq!(python_int(""), None);
        assert_eq!(python_int("REFUSAL"), None);
    }

    #[test]
    fn out_of_range_integers_do_not_count() {
        let j = aggregate(top(&[
            (" 85", 0.3),
            ("085", 0.2),
            ("100", 0.1),
            ("-5", 0.2),
            ("101", 0.2),
        ]));
        assert!(close(j.mass, 0.6));
        assert!(close(
            j.score.unwrap(),
            (0.3 * 85.0 + 0.2 * 85.0 + 0.1 * 100.0) / 0.6
        ));
    }

    #[test]
    fn low_mass_is_null_with_the_preferred_answer() {
        let j = aggregate(top(&[("REFUSAL", 0.7), ("0", 0.2)]));
        assert_eq!(j.score, None);
        assert!(close(j.mass, 0.2));
        assert_eq!(j.null_reason, Some(NullReason::Refusal));
        let j = aggregate(top(&[("CODE", 0.9), ("50", 0.05)]));
        assert_eq!(j.null_reason, Some(NullReason::Code));
        let j = aggregate(top(&[("I", 0.6), ("50", 0.1)]));
        assert_eq!(j.null_reason, Some(NullReason::Other("I".into())));
    }

    #[test]
    fn the_threshold_separates_scores_from_nulls() {
        let j = aggregate(top(&[("40", 0.26), ("x", 0.74)]));
        assert!(close(j.score.unwrap(), 40.0));
        let j = aggregate(top(&[("40", 0.24), ("x", 0.76)]));
        assert_eq!(j.score, None);
    }

    #[test]
    fn a_repeated_token_keeps_its_last_probability() {
        let j = aggregate(top(&[("70", 0.1), ("70", 0.4)]));
        assert!(close(j.mass, 0.4));
    }

    #[test]
    fn exact_number_probabilities_make_a_judgment() {
        let mut probs = vec![0.0; 101];
        probs[80] = 0.5;
        probs[100] = 0.25;
        let j = Judgment::from_number_probs(&probs, "80", MIN_MASS);
        assert!(close(j.mass, 0.75));
        assert!(close(j.score.unwrap(), (40.0 + 25.0) / 0.75));
        assert_eq!(j.top[0].token, "80");
        let j = Judgment::from_number_probs(&vec![0.001; 101], " REFUSAL", MIN_MASS);
        assert_eq!(j.score, None);
        assert_eq!(j.null_reason, Some(NullReason::Refusal));
        let j = Judgment::from_number_probs(&vec![0.001; 101], " REFUSAL", 0.0);
        assert!((j.score.unwrap() - 50.0).abs() < 1e-9);
        let j = Judgment::from_number_probs(&[0.0; 101], "I", 0.0);
        assert_eq!(j.null_reason, Some(NullReason::Other("I".into())));
    }

    #[test]
    fn judgments_round_trip_through_json() {
        let j = aggregate(top(&[("REFUSAL", 0.9)]));
        let back: Judgment = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
        assert_eq!(back, j);
    }
}
