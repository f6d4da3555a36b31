//! GGUF reading, dequantization, conversion to a Hugging Face model folder,
//! and writing of small f32 files (control vectors).

mod convert;
mod dequant;
mod error;
mod reader;
mod tokenizer;
mod writer;

pub use convert::{convert_to_hf, ConvertOptions, ConvertSummary, OutputDtype};
pub use dequant::{dequantize, GgmlType};
pub use error::GgufError;
pub use reader::{GgufFile, MetaValue, TensorInfo};
pub use writer::{gguf_bytes, write_gguf, WriteValue};
