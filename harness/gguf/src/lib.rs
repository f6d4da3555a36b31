//! GGUF reading, dequantization and conversion to a Hugging Face model folder.

mod convert;
mod dequant;
mod error;
mod reader;
mod tokenizer;

pub use convert::{convert_to_hf, ConvertOptions, ConvertSummary, OutputDtype};
pub use dequant::{dequantize, GgmlType};
pub use error::GgufError;
pub use reader::{GgufFile, MetaValue, TensorInfo};
