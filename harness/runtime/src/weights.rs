//! Safetensors weights of a model folder, single-file or sharded with an index.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::RuntimeError;

/// One memory-mapped safetensors file, its header parsed once.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    /// Where tensor data starts: after the length prefix and the header.
    data_start: usize,
}

/// The memory-mapped safetensors files of a model folder.
pub struct WeightFiles {
    files: Vec<MappedFile>,
    /// Tensor name → (index into `files`, where its data lies).
    index: HashMap<String, (usize, TensorInfo)>,
}

fn file_err(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn map_file(path: &Path) -> Result<Mmap, RuntimeError> {
    let f = File::open(path).map_err(|e| file_err(path, e.to_string()))?;
    // SAFETY: read-only map; weight files are not modified while a model loads.
    unsafe { Mmap::map(&f) }.map_err(|e| file_err(path, e.to_string()))
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

impl WeightFiles {
    /// Opens `model.safetensors` or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, RuntimeError> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| file_err(&index_path, e.to_string()))?;
            let idx: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| file_err(&index_path, format!("invalid JSON: {e}")))?;
            let map = idx["weight_map"]
                .as_object()
                .ok_or_else(|| file_err(&index_path, "no `weight_map` object"))?;
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if dir.join("model.safetensors").is_file() {
            vec![dir.join("model.safetensors")]
        } else {
            return Err(file_err(
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ));
        };
        let mut weights = WeightFiles {
            files: Vec::new(),
            index: HashMap::new(),
        };
        for path in files {
            weights.add_file(path)?;
        }
        Ok(weights)
    }

    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self, RuntimeError> {
        let mut weights = WeightFiles {
            files: Vec::new(),
            index: HashMap::new(),
        };
        weights.add_file(path.to_path_buf())?;
        Ok(weights)
    }

    /// Maps a file and indexes its tensors; the header is checked against the
    /// file size here, so a truncated file fails before any tensor is read.
    fn add_file(&mut self, path: PathBuf) -> Result<(), RuntimeError> {
        let mmap = map_file(&path)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| file_err(&path, format!("corrupt or truncated safetensors: {e}")))?;
        let i = self.files.len();
        for (name, info) in metadata.tensors() {
            self.index.insert(name, (i, info.clone()));
        }
        self.files.push(MappedFile {
            path,
            mmap,
            data_start: 8 + header_len,
        });
        Ok(())
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Loads a tensor, checks its shape, and moves it to `kind` on `device`.
    pub fn load(
        &self,
        name: &str,
        shape: &[usize],
        kind: Kind,
        device: Device,
    ) -> Result<Tensor, RuntimeError> {
        let (i, info) = self.index.get(name).ok_or_else(|| RuntimeError::Weight {
            path: self.files[0]
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            tensor: name.into(),
            reason: "missing from the weight files".into(),
        })?;
        let file = &self.files[*i];
        let err = |reason: String| RuntimeError::Weight {
            path: file.path.clone(),
            tensor: name.into(),
            reason,
        };
        if info.shape != shape {
            return Err(err(format!(
                "shape {:?} does not match the config, which implies {:?}",
                info.shape, shape
            )));
        }
        let src_kind = kind_of(info.dtype)
            .ok_or_else(|| err(format!("unsupported dtype {:?}", info.dtype)))?;
        let (start, end) = info.data_offsets;
        let data = &file.mmap[file.data_start + start..file.data_start + end];
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(data, &dims, src_kind)?;
        Ok(t.f_to_device(device)?.f_to_kind(kind)?)
    }
}
