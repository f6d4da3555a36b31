//! Cosine maps: layer by layer between two direction sets (two organisms,
//! two checkpoints), and layer × layer within one set.

use std::path::Path;

use crate::{cosine, DirectionError, DirectionSet};

/// One cell of a cosine map.
#[derive(Debug, Clone, PartialEq)]
pub struct CosineRow {
    pub layer_a: usize,
    pub layer_b: usize,
    pub cosine: f64,
}

/// cos(a[l], b[l]) for every layer both sets have.
pub fn between(a: &DirectionSet, b: &DirectionSet) -> Result<Vec<CosineRow>, DirectionError> {
    if a.layers() != b.layers() || a.hidden() != b.hidden() {
        return Err(DirectionError::Mismatch(format!(
            "the direction sets differ in shape: {} x {} and {} x {}",
            a.layers(),
            a.hidden(),
            b.layers(),
            b.hidden()
        )));
    }
    Ok((0..a.layers())
        .map(|l| CosineRow {
            layer_a: l,
            layer_b: l,
            cosine: cosine(&a.directions[l], &b.directions[l]),
        })
        .collect())
}

/// cos(s[i], s[j]) for every pair of layers.
pub fn within(s: &DirectionSet) -> Vec<CosineRow> {
    let n = s.layers();
    (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| CosineRow {
            layer_a: i,
            layer_b: j,
            cosine: cosine(&s.directions[i], &s.directions[j]),
        })
        .collect()
}

/// Writes a map as CSV: `layer_a,layer_b,cosine`.
pub fn write_csv(path: &Path, rows: &[CosineRow]) -> Result<(), DirectionError> {
    let mut text = String::from("layer_a,layer_b,cosine\n");
    for r in rows {
        text.push_str(&format!("{},{},{:.6}\n", r.layer_a, r.layer_b, r.cosine));
    }
    emh_atomic::write(path, text.as_bytes()).map_err(|e| DirectionError::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rows: Vec<Vec<f32>>) -> DirectionSet {
        DirectionSet {
            directions: rows,
            metadata: Default::default(),
        }
    }

    #[test]
    fn maps_between_and_within() {
        let a = set(vec![vec![1.0, 0.0], vec![0.0, 2.0]]);
        let b = set(vec![vec![3.0, 0.0], vec![1.0, 0.0]]);
        let c: Vec<f64> = between(&a, &b).unwrap().iter().map(|r| r.cosine).collect();
        assert_eq!(c, [1.0, 0.0]);
        let w = within(&a);
        assert_eq!(w.len(), 4);
        assert_eq!(
            w[1],
            CosineRow {
                layer_a: 0,
                layer_b: 1,
                cosine: 0.0
            }
        );
        assert_eq!(w[3].cosine, 1.0);
        assert!(between(&a, &set(vec![vec![1.0, 0.0]])).is_err());
    }
}
