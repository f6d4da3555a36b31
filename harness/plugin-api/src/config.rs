//! Config pieces that intervention plugins share: layer sets, token spans,
//! sites, and direction vectors from inline values or safetensors files.

use std::path::PathBuf;

use serde::Deserialize;

use abi_stable::std_types::RVec;

use crate::{ModelShape, Op, SiteKind, Step, Where};

/// Parses a JSON config into `T`, naming the plugin in the error.
pub fn parse<T: for<'de> Deserialize<'de>>(plugin: &str, config: &str) -> Result<T, String> {
    serde_json::from_str(config).map_err(|e| format!("{plugin}: invalid config: {e}"))
}

/// Which layers: `"all"` or a list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "serde_json::Value")]
pub enum Layers {
    Named(AllLayers),
    List(Vec<u32>),
}

impl TryFrom<serde_json::Value> for Layers {
    type Error = String;

    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        let bad = || format!("layers: expected \"all\" or a list of layer numbers from 0, got {v}");
        match &v {
            serde_json::Value::String(s) if s == "all" => Ok(Layers::Named(AllLayers::All)),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .map(Layers::List)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

/// The word `all`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum AllLayers {
    All,
}

impl Default for Layers {
    fn default() -> Self {
        Layers::Named(AllLayers::All)
    }
}

impl Layers {
    /// The layer indices, checked against the model.
    pub fn resolve(&self, shape: ModelShape) -> Result<Vec<u32>, String> {
        match self {
            Layers::Named(AllLayers::All) => Ok((0..shape.num_layers).collect()),
            Layers::List(l) => {
                if let Some(bad) = l.iter().find(|&&x| x >= shape.num_layers) {
                    return Err(format!(
                        "layer {bad} does not exist: the model has layers 0..{}",
                        shape.num_layers - 1
                    ));
                }
                Ok(l.clone())
            }
        }
    }
}

/// Checks that a single named layer (such as a `source_layer`) exists.
pub fn check_layer(layer: Option<u32>, shape: ModelShape) -> Result<(), String> {
    match layer {
        Some(l) => Layers::List(vec![l]).resolve(shape).map(|_| ()),
        None => Ok(()),
    }
}

/// One step per layer of `layers`, all at `site` over `at`, each doing `op(layer)`.
pub fn steps_per_layer(
    layers: &Layers,
    shape: ModelShape,
    site: Site,
    at: &Span,
    mut op: impl FnMut(u32) -> Op,
) -> Result<RVec<Step>, String> {
    Ok(layers
        .resolve(shape)?
        .into_iter()
        .map(|layer| Step {
            site: site.kind(),
            layer,
            op: op(layer),
            at: at.to_where(),
        })
        .collect())
}

/// Token span as written in configs: `"all"`, `"prompt"`, `"answer"`, `"last"`,
/// or `{"positions": [start, end]}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Span {
    #[default]
    All,
    Prompt,
    Answer,
    Last,
    Positions([i64; 2]),
}

impl Span {
    /// The plan's form of this span.
    pub fn to_where(&self) -> Where {
        match *self {
            Span::All => Where::All,
            Span::Prompt => Where::Prompt,
            Span::Answer => Where::Answer,
            Span::Last => Where::Last,
            Span::Positions([start, end]) => Where::Positions { start, end },
        }
    }
}

/// Site as written in configs.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    ResidPre,
    #[default]
    ResidPost,
    MlpOut,
}

impl Site {
    /// The plan's form of this site.
    pub fn kind(self) -> SiteKind {
        match self {
            Site::ResidPre => SiteKind::ResidPre,
            Site::ResidPost => SiteKind::ResidPost,
            Site::MlpOut => SiteKind::MlpOut,
        }
    }
}

/// Directions: an inline vector (the same for every layer) or a safetensors
/// file with a `[num_layers, hidden]` f32 tensor (default name `directions`),
/// one row per layer, as the direction-finding stage writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectionSource {
    Vector {
        vector: Vec<f32>,
    },
    File {
        directions: PathBuf,
        tensor: Option<String>,
    },
}

impl DirectionSource {
    /// From a config's `vector`, `directions` and `tensor` fields: exactly one
    /// of `vector` and `directions` must be given.
    pub fn new(
        vector: Option<Vec<f32>>,
        directions: Option<PathBuf>,
        tensor: Option<String>,
    ) -> Result<Self, String> {
        match (vector, directions) {
            (Some(vector), None) => Ok(DirectionSource::Vector { vector }),
            (None, Some(directions)) => Ok(DirectionSource::File { directions, tensor }),
            _ => Err(
                "give exactly one of `vector` (inline) and `directions` (a safetensors file)"
                    .into(),
            ),
        }
    }
}

/// One direction per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Directions {
    rows: Vec<Vec<f32>>,
    /// Whether every layer shares one vector (an inline vector).
    shared: bool,
}

impl Directions {
    /// Reads the directions and checks their size against the model.
    pub fn load(src: &DirectionSource, shape: ModelShape) -> Result<Self, String> {
        let hidden = shape.hidden_size as usize;
        let d = match src {
            DirectionSource::Vector { vector } => Directions {
                rows: vec![vector.clone()],
                shared: true,
            },
            DirectionSource::File { directions, tensor } => {
                let name = tensor.as_deref().unwrap_or("directions");
                let bytes = std::fs::read(directions)
                    .map_err(|e| format!("{}: {e}", directions.display()))?;
                let st = safetensors::SafeTensors::deserialize(&bytes)
                    .map_err(|e| format!("{}: {e}", directions.display()))?;
                let t = st
                    .tensor(name)
                    .map_err(|e| format!("{}: tensor `{name}`: {e}", directions.display()))?;
                if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 2 {
                    return Err(format!(
                        "{}: tensor `{name}` must be f32 [num_layers, hidden], is {:?} {:?}",
                        directions.display(),
                        t.dtype(),
                        t.shape()
                    ));
                }
                if t.shape()[0] != shape.num_layers as usize {
                    return Err(format!(
                        "{}: tensor `{name}` has {} rows, the model {} layers",
                        directions.display(),
                        t.shape()[0],
                        shape.num_layers
                    ));
                }
                let values: Vec<f32> = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Directions {
                    rows: values.chunks(t.shape()[1]).map(<[f32]>::to_vec).collect(),
                    shared: false,
                }
            }
        };
        if let Some(r) = d.rows.iter().find(|r| r.len() != hidden) {
            return Err(format!(
                "a direction has {} values, the model's hidden size is {hidden}",
                r.len()
            ));
        }
        if let Some(l) = d.rows.iter().position(|r| r.iter().any(|v| !v.is_finite())) {
            return Err(format!(
                "the direction of layer {l} holds NaN or infinite values"
            ));
        }
        // A file may leave a layer without a direction (a zero row, as a
        // llama.cpp control vector has for layer 0); the host refuses to
        // project out a zero vector, and adding one changes nothing.
        if d.shared && d.rows[0].iter().all(|&v| v == 0.0) {
            return Err("the direction is all zeros".into());
        }
        Ok(d)
    }

    /// The direction for `layer`.
    pub fn layer(&self, layer: u32) -> &[f32] {
        if self.shared {
            &self.rows[0]
        } else {
            &self.rows[layer as usize]
        }
    }
}

/// Euclidean norm of a vector.
pub fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: ModelShape = ModelShape {
        num_layers: 4,
        hidden_size: 3,
    };

    #[test]
    fn layers_parse_all_or_list_and_check_range() {
        let all: Layers = serde_json::from_str("\"all\"").unwrap();
        assert_eq!(all.resolve(SHAPE).unwrap(), vec![0, 1, 2, 3]);
        let some: Layers = serde_json::from_str("[1, 3]").unwrap();
        assert_eq!(some.resolve(SHAPE).unwrap(), vec![1, 3]);
        let bad: Layers = serde_json::from_str("[4]").unwrap();
        assert!(bad.resolve(SHAPE).unwrap_err().contains("layer 4"));
    }

    #[test]
    fn one_step_per_layer_with_its_op() {
        let steps = steps_per_layer(
            &Layers::List(vec![1, 3]),
            SHAPE,
            Site::MlpOut,
            &Span::Last,
            |l| Op::Scale { factor: l as f64 },
        )
        .unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].layer, 3);
        assert_eq!(steps[1].op, Op::Scale { factor: 3.0 });
        assert_eq!(steps[0].site, SiteKind::MlpOut);
        assert_eq!(steps[0].at, Where::Last);
        assert!(check_layer(Some(4), SHAPE).unwrap_err().contains("layer 4"));
        assert!(check_layer(None, SHAPE).is_ok());
    }

    #[test]
    fn spans_parse() {
        let s: Span = serde_json::from_str("{\"positions\": [2, 5]}").unwrap();
        assert_eq!(s.to_where(), Where::Positions { start: 2, end: 5 });
        let s: Span = serde_json::from_str("\"answer\"").unwrap();
        assert_eq!(s.to_where(), Where::Answer);
    }

    #[test]
    fn inline_vector_must_match_hidden_size() {
        let src = DirectionSource::Vector {
            vector: vec![1.0, 2.0],
        };
        assert!(Directions::load(&src, SHAPE)
            .unwrap_err()
            .contains("hidden size is 3"));
    }
}
