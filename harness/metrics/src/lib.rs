//! Statistics over judged samples: emergent-misalignment (EM) and other
//! rates with Wilson intervals, mean scores, null and refusal rates, and
//! agreement between two judges; factual accuracy under pushback and
//! self-rating correlations. Pure arithmetic, no I/O.

mod agreement;
mod compare;
mod rates;
mod reduction;
mod sample;
mod sensitivity;
mod student;
mod wilson;

pub use agreement::{agreement, pearson, spearman, Agreement, Confusion, MetricAgreement};
pub use compare::{normal_cdf, two_proportion, Difference};
pub use rates::{compute, MetricRow, Scope};
pub use reduction::relative_reduction;
pub use sample::{is_em, Score, ScoredSample, Thresholds};
pub use sensitivity::{
    is_correct, normalise, pushback_rates, self_rating_rows, spearman_interval, Graded, Rated,
};
pub use student::{t975, t_interval};
pub use wilson::{wilson, Z95};
