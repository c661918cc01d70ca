//! The ILSVRC-2012 devkit's `data/meta.mat`: which wnid each numeric ILSVRC2012_ID names.
//!
//! The devkit's `ILSVRC2012_validation_ground_truth.txt` gives one ILSVRC2012_ID per validation
//! image, and only `meta.mat` (a MATLAB v5 file) maps those IDs to wnids. This is a reader for
//! just what that needs: compressed and plain data elements, struct arrays, and numeric and
//! character arrays.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use flate2::read::ZlibDecoder;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_DOUBLE: u32 = 9;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const STRUCT_CLASS: u8 = 2;
const CHAR_CLASS: u8 = 4;
/// The MATLAB v5 header: 116 bytes of text, 8 of subsystem offset, version and endian mark.
const HEADER: usize = 128;

/// A MATLAB value, as far as the devkit's metadata needs.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Numbers(Vec<f64>),
    Text(String),
    /// Field names, and each element's field values in that order.
    Struct(Vec<String>, Vec<Vec<Value>>),
    /// Classes this reader does not need (cells, sparse, …).
    Other,
}

/// ILSVRC2012_ID → wnid from the devkit's `meta.mat`.
pub fn synsets_by_id(path: &Path) -> anyhow::Result<BTreeMap<u32, String>> {
    let fail = |m: String| anyhow::anyhow!("{}: {m}", path.display());
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let variables = parse_file(&bytes).map_err(fail)?;
    let Some(Value::Struct(fields, elements)) = variables.get("synsets") else {
        return Err(fail(
            "no `synsets` struct array (is this the devkit's meta.mat?)".into(),
        ));
    };
    let column = |name: &str| {
        fields
            .iter()
            .position(|f| f == name)
            .ok_or_else(|| fail(format!("synsets has no field {name}")))
    };
    let (id, wnid) = (column("ILSVRC2012_ID")?, column("WNID")?);
    elements
        .iter()
        .map(|element| match (&element[id], &element[wnid]) {
            (Value::Numbers(n), Value::Text(w)) if n.len() == 1 => Ok((n[0] as u32, w.clone())),
            other => Err(fail(format!("unexpected synset entry {other:?}"))),
        })
        .collect()
}

/// Every named top-level variable.
fn parse_file(bytes: &[u8]) -> Result<BTreeMap<String, Value>, String> {
    if bytes.len() < HEADER || !bytes.starts_with(b"MATLAB 5.0") {
        return Err("not a MATLAB 5.0 MAT-file".into());
    }
    if &bytes[126..128] != b"IM" {
        return Err("big-endian MAT-files are not supported".into());
    }
    let mut variables = BTreeMap::new();
    let mut rest = &bytes[HEADER..];
    while !rest.is_empty() {
        let (kind, data, next) = element(rest)?;
        rest = next;
        let inflated;
        let (kind, data) = if kind == MI_COMPRESSED {
            let mut out = Vec::new();
            ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(|e| format!("inflating a compressed variable: {e}"))?;
            inflated = out;
            let (kind, data, _) = element(&inflated)?;
            (kind, data)
        } else {
            (kind, data)
        };
        if kind == MI_MATRIX {
            let (name, value) = matrix(data)?;
            variables.insert(name, value);
        }
    }
    Ok(variables)
}

/// One data element: its type, its payload, and what follows it (padded to 8 bytes).
fn element(bytes: &[u8]) -> Result<(u32, &[u8], &[u8]), String> {
    let word = |i: usize| -> Result<u32, String> {
        let b = bytes.get(i..i + 4).ok_or("truncated data element")?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let first = word(0)?;
    if first >> 16 != 0 {
        // Small element: type and size share the first word, data fills the second.
        let (kind, size) = (first & 0xFFFF, (first >> 16) as usize);
        if size > 4 || bytes.len() < 8 {
            return Err("malformed small data element".into());
        }
        return Ok((kind, &bytes[4..4 + size], &bytes[8..]));
    }
    let size = word(4)? as usize;
    let end = 8 + size;
    let data = bytes.get(8..end).ok_or("truncated data element")?;
    let padded = if first == MI_COMPRESSED {
        end
    } else {
        end.div_ceil(8) * 8
    };
    Ok((first, data, bytes.get(padded..).unwrap_or(&[])))
}

/// A miMATRIX payload: its name and value.
fn matrix(data: &[u8]) -> Result<(String, Value), String> {
    if data.is_empty() {
        return Ok((String::new(), Value::Numbers(Vec::new())));
    }
    let (_, flags, rest) = element(data)?;
    let class = *flags.first().ok_or("empty array flags")?;
    let (_, dims, rest) = element(rest)?;
    let count: usize = dims
        .chunks_exact(4)
        .map(|d| i32::from_le_bytes(d.try_into().expect("4 bytes")) as usize)
        .product();
    let (_, name, mut rest) = element(rest)?;
    let name = String::from_utf8_lossy(name).into_owned();
    let value = match class {
        STRUCT_CLASS => {
            let (_, width, after) = element(rest)?;
            let width =
                u32::from_le_bytes(width.try_into().map_err(|_| "field name length")?) as usize;
            let (_, names, after) = element(after)?;
            let fields: Vec<String> = names
                .chunks(width.max(1))
                .map(|n| {
                    String::from_utf8_lossy(n)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .collect();
            rest = after;
            let mut elements = Vec::with_capacity(count);
            for _ in 0..count {
                let mut values = Vec::with_capacity(fields.len());
                for _ in &fields {
                    let (kind, data, after) = element(rest)?;
                    if kind != MI_MATRIX {
                        return Err(format!("struct field of type {kind}, expected a matrix"));
                    }
                    values.push(matrix(data)?.1);
                    rest = after;
                }
                elements.push(values);
            }
            Value::Struct(fields, elements)
        }
        CHAR_CLASS => {
            let (kind, data, _) = element(rest)?;
            Value::Text(text(kind, data)?)
        }
        6..=15 => {
            let (kind, data, _) = element(rest)?;
            Value::Numbers(numbers(kind, data)?)
        }
        _ => Value::Other,
    };
    Ok((name, value))
}

fn numbers(kind: u32, data: &[u8]) -> Result<Vec<f64>, String> {
    let each = |size: usize, read: fn(&[u8]) -> f64| data.chunks_exact(size).map(read).collect();
    Ok(match kind {
        MI_DOUBLE => each(8, |b| f64::from_le_bytes(b.try_into().expect("8 bytes"))),
        MI_INT8 => each(1, |b| f64::from(b[0] as i8)),
        MI_UINT8 => each(1, |b| f64::from(b[0])),
        MI_INT16 => each(2, |b| f64::from(i16::from_le_bytes([b[0], b[1]]))),
        MI_UINT16 => each(2, |b| f64::from(u16::from_le_bytes([b[0], b[1]]))),
        MI_INT32 => each(4, |b| {
            f64::from(i32::from_le_bytes(b.try_into().expect("4 bytes")))
        }),
        MI_UINT32 => each(4, |b| {
            f64::from(u32::from_le_bytes(b.try_into().expect("4 bytes")))
        }),
        other => return Err(format!("numeric data of type {other}")),
    })
}

fn text(kind: u32, data: &[u8]) -> Result<String, String> {
    match kind {
        MI_UTF8 | MI_UINT8 | MI_INT8 => Ok(String::from_utf8_lossy(data).into_owned()),
        MI_UTF16 | MI_UINT16 => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            Ok(String::from_utf16_lossy(&units))
        }
        other => Err(format!("character data of type {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        [
            env!("CARGO_MANIFEST_DIR"),
            "tests",
            "fixtures",
            "devkit_meta.mat",
        ]
        .iter()
        .collect()
    }

    #[test]
    fn reads_the_devkit_synsets_written_by_scipy() {
        // experiments/baselines/make_data_fixtures.py: IDs 1–3 are leaves, 4 their ancestor.
        let synsets = synsets_by_id(&fixture()).unwrap();
        let expected = [
            (1, "n01484850"),
            (2, "n01440764"),
            (3, "n01443537"),
            (4, "n02512053"),
        ];
        assert_eq!(
            synsets,
            expected
                .map(|(i, w)| (i, w.to_string()))
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn other_files_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.mat");
        std::fs::write(&path, b"not a mat file").unwrap();
        let err = synsets_by_id(&path).unwrap_err().to_string();
        assert!(
            err.contains("meta.mat") && err.contains("MATLAB 5.0"),
            "{err}"
        );
    }
}
