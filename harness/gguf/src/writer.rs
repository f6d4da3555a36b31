//! Writes GGUF files (version 3) of f32 tensors and string or integer
//! metadata: what small artefacts such as control vectors need.

use std::path::Path;

use crate::GgufError;

/// A metadata value to write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteValue {
    U32(u32),
    Str(String),
}

/// Alignment of the data section and of each tensor in it (GGUF's default).
const ALIGNMENT: usize = 32;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// The bytes of a GGUF file holding `metadata` and 1-D or 2-D f32 `tensors`
/// (row-major shapes, written in GGUF's fastest-first order).
pub fn gguf_bytes(
    metadata: &[(String, WriteValue)],
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Vec<u8> {
    const STRING: u32 = 8;
    const UINT32: u32 = 4;
    const F32: u32 = 0;
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key);
        match value {
            WriteValue::U32(v) => {
                out.extend(UINT32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            WriteValue::Str(s) => {
                out.extend(STRING.to_le_bytes());
                put_str(&mut out, s);
            }
        }
    }
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        put_str(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(F32.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offset += (values.len() * 4).next_multiple_of(ALIGNMENT);
    }
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    for (_, _, values) in tensors {
        let start = out.len();
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        out.resize(start + (values.len() * 4).next_multiple_of(ALIGNMENT), 0);
    }
    out
}

/// Writes a GGUF file atomically (see `gguf_bytes`).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, WriteValue)],
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), GgufError> {
    emh_atomic::write(path, &gguf_bytes(metadata, tensors)).map_err(|e| GgufError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    #[test]
    fn what_is_written_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.gguf");
        let a: Vec<f32> = (0..5).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..6).map(|i| -(i as f32)).collect();
        write_gguf(
            &path,
            &[
                (
                    "general.architecture".into(),
                    WriteValue::Str("controlvector".into()),
                ),
                ("controlvector.layer_count".into(), WriteValue::U32(2)),
            ],
            &[
                ("direction.1".into(), vec![5], a.clone()),
                ("m".into(), vec![2, 3], b.clone()),
            ],
        )
        .unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(
            f.get("general.architecture").unwrap().as_str(),
            Some("controlvector")
        );
        assert_eq!(
            f.get("controlvector.layer_count").unwrap().as_u64(),
            Some(2)
        );
        let t = f.tensor("direction.1").unwrap();
        assert_eq!(f.tensor_f32(t).unwrap(), a);
        let m = f.tensor("m").unwrap();
        assert_eq!(m.shape(), vec![2, 3]);
        assert_eq!(f.tensor_f32(m).unwrap(), b);
    }
}
