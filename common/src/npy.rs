//! NumPy's `.npy` files of little-endian float32 arrays in C order: what `numpy.save` writes for
//! a `float32` array and `numpy.load` reads, so model inputs and logits pass between incept and
//! Python (`coordinator predict`, the timm parity check).

use std::path::Path;

use crate::fsutil::write_atomic;

/// The magic string every `.npy` file starts with.
const MAGIC: &[u8] = b"\x93NUMPY";

/// A float32 array: its shape and values in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Length of each dimension.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub values: Vec<f32>,
}

/// Reads a `.npy` file of float32 values; any other dtype or a Fortran-ordered array is an
/// error naming the file and what it holds.
pub fn read(path: &Path) -> anyhow::Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes `array` as a version 1.0 `.npy` file (temp file, fsync, rename).
pub fn write(path: &Path, array: &Array) -> anyhow::Result<()> {
    let shape: Vec<String> = array.shape.iter().map(usize::to_string).collect();
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.join(", ")),
    };
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}").into_bytes();
    // The data starts on a 64-byte boundary; the header ends with a newline.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.resize(
        header.len() + unpadded.next_multiple_of(64) - unpadded,
        b' ',
    );
    header.push(b'\n');
    let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + header.len() + 4 * array.values.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    let len = u16::try_from(header.len()).map_err(|_| anyhow::anyhow!("npy header too long"))?;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&header);
    for value in &array.values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    write_atomic(path, &bytes, 0o644)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

fn parse(bytes: &[u8]) -> Result<Array, String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a .npy file (no \\x93NUMPY magic)")?;
    let (header_len, rest) = match rest {
        [1, _, a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        [2 | 3, _, a, b, c, d, rest @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]) as usize, rest),
        [major, ..] => return Err(format!(".npy format version {major} is not supported")),
        [] => return Err("truncated .npy header".into()),
    };
    if rest.len() < header_len {
        return Err("truncated .npy header".into());
    }
    let (header, data) = rest.split_at(header_len);
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = field(header, "descr")?;
    if descr.trim_matches(['\'', '"']) != "<f4" {
        return Err(format!(
            "holds {descr} values; float32 ('<f4') is needed (numpy: array.astype('float32'))"
        ));
    }
    if field(header, "fortran_order")? != "False" {
        return Err("holds a Fortran-ordered array; C order is needed".into());
    }
    let shape = parse_shape(field(header, "shape")?)?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("shape too large")?;
    if data.len() != 4 * count {
        return Err(format!(
            "shape {shape:?} needs {} bytes of data, the file has {}",
            4 * count,
            data.len()
        ));
    }
    let values = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Array { shape, values })
}

/// The text of `key`'s value in the header's Python dict literal (a tuple for `shape`).
fn field<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    let missing = || format!("the .npy header has no {key:?}");
    let start = header.find(&format!("'{key}'")).ok_or_else(missing)? + key.len() + 2;
    let value = header[start..]
        .trim_start()
        .strip_prefix(':')
        .ok_or_else(missing)?
        .trim_start();
    let end = if value.starts_with('(') {
        value.find(')').map(|i| i + 1)
    } else {
        value.find([',', '}'])
    }
    .ok_or_else(missing)?;
    Ok(value[..end].trim())
}

fn parse_shape(tuple: &str) -> Result<Vec<usize>, String> {
    let inner = tuple
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("malformed shape {tuple}"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().map_err(|_| format!("malformed shape {tuple}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_writes_what_numpy_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let array = Array {
            shape: vec![2, 3],
            values: vec![1.0, -2.5, 3.0, 0.0, f32::MAX, 1e-7],
        };
        write(&path, &array).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // numpy.save(np.zeros((2, 3), np.float32)): the same 128-byte header.
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 118);
        assert!(bytes[10..].starts_with(header.as_bytes()));
        assert_eq!(bytes[127], b'\n');
        assert_eq!(bytes.len(), 128 + 24);
        assert_eq!(read(&path).unwrap(), array);
    }

    #[test]
    fn other_dtypes_and_truncated_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        write(
            &path,
            &Array {
                shape: vec![4],
                values: vec![0.0; 4],
            },
        )
        .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("needs 16 bytes"), "{err}");
        let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
        bytes[at + 2] = b'8';
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("float32"), "{err}");
        std::fs::write(&path, b"PK\x03\x04").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("not a .npy file"), "{err}");
    }
}
