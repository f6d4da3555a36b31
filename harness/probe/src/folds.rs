//! Stratified fold assignment.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{class_counts, ProbeError};

/// Assigns each row a fold in `0..k` so every fold gets the same share of
/// each class (within one row), after shuffling each class with `seed`.
///
/// The shuffle depends on `rand`'s algorithm, which may change between its
/// versions; callers that must reproduce a split elsewhere should keep the
/// returned assignment rather than the seed.
pub fn stratified_folds(labels: &[bool], k: usize, seed: u64) -> Result<Vec<usize>, ProbeError> {
    if k < 2 {
        return Err(ProbeError::Options(format!(
            "folds must be at least 2, got {k}"
        )));
    }
    // Fewer rows of a class than folds would leave a fold without that class,
    // where recall or AUC is undefined.
    class_counts(labels.iter().copied(), k)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order = Vec::with_capacity(labels.len());
    for class in [true, false] {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&r| labels[r] == class).collect();
        members.shuffle(&mut rng);
        order.extend(members);
    }
    // Dealing both classes round-robin in one pass keeps each class's share
    // and the fold sizes within one row of even.
    let mut folds = vec![0; labels.len()];
    for (position, &row) in order.iter().enumerate() {
        folds[row] = position % k;
    }
    Ok(folds)
}

/// Checks a given assignment and returns its number of folds: one fold per
/// row, folds `0..k` with `k >= 2`, each holding both classes.
pub(crate) fn check(labels: &[bool], folds: &[usize]) -> Result<usize, ProbeError> {
    if folds.len() != labels.len() {
        return Err(ProbeError::Folds(format!(
            "{} folds for {} rows",
            folds.len(),
            labels.len()
        )));
    }
    let k = folds.iter().max().map_or(0, |&m| m + 1);
    if k < 2 {
        return Err(ProbeError::Folds(format!("need at least 2 folds, got {k}")));
    }
    for f in 0..k {
        let members = folds.iter().zip(labels).filter(|(&g, _)| g == f);
        class_counts(members.map(|(_, &l)| l), 1)
            .map_err(|e| ProbeError::Folds(format!("fold {f}: {e}")))?;
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_keep_class_ratios_and_sizes() {
        // 37 positives and 83 negatives: neither divides by 5.
        let labels: Vec<bool> = (0..120).map(|i| i < 37).collect();
        let folds = stratified_folds(&labels, 5, 7).expect("enough rows");
        for f in 0..5 {
            let size = folds.iter().filter(|&&g| g == f).count();
            let pos = (0..120).filter(|&r| folds[r] == f && labels[r]).count();
            assert_eq!(size, 24, "fold {f}");
            assert!(pos == 7 || pos == 8, "fold {f} has {pos} positives");
        }
        assert_eq!(check(&labels, &folds), Ok(5));
    }

    #[test]
    fn the_seed_decides_the_split() {
        let labels: Vec<bool> = (0..50).map(|i| i % 3 == 0).collect();
        let a = stratified_folds(&labels, 5, 1).expect("enough rows");
        assert_eq!(a, stratified_folds(&labels, 5, 1).expect("enough rows"));
        assert_ne!(a, stratified_folds(&labels, 5, 2).expect("enough rows"));
    }

    #[test]
    fn too_few_of_a_class_is_refused() {
        let labels = [true, true, false, false, false, false];
        assert_eq!(
            stratified_folds(&labels, 3, 0),
            Err(ProbeError::ClassCounts {
                positives: 2,
                negatives: 4,
                needed: 3
            })
        );
    }
}
