//! CPU matrix products `x · wᵀ` for the runtime's linear layers.
//!
//! Weights are `[rows, cols]` (out × in, as HF stores them). They are either
//! dense f32 or, when every block of 32 values along a row is exactly a ggml
//! Q4_1 or Q8_0 block (as weights imported from such a GGUF file are), kept
//! in that packed form: the same values in a quarter or a third of the
//! memory, which is what bounds a one-token decoding step. Weights that are
//! all bf16 values (an ordinary bf16 checkpoint loaded as f32) are kept as
//! those 16 bits: the same values in half the memory.

mod activation;
mod attention;
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod norm;
mod pack;
mod pool;
mod product;
mod rope;
mod sample;

pub use activation::silu_mul;
pub use attention::{attend_one, CacheShape};
pub use norm::rms_norm;
pub use pack::Packed;
pub use pool::{zero, Pool};
pub use product::{linear, Weights};
pub use rope::rotate_into_cache;
pub use sample::{inverse_cdf, sample};

/// Whether this processor has the AVX2 and FMA kernels (and, where it has
/// AVX-512, their wider forms); without them the products fall back to
/// plain loops, which are correct but slow.
pub fn fast() -> bool {
    avx2::available()
}
