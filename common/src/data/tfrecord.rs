//! TFRecord framing and the `tf.train.Example` image records inside it.
//!
//! A record is `u64 length`, `u32 masked CRC-32C of the length`, the payload, `u32 masked
//! CRC-32C of the payload`, all little-endian. Both checksums are verified on read, and every
//! error names the shard and the byte offset of the record.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::CRC32C;
use crate::proto::tensorflow::{BytesList, Example, Feature, Features, Int64List, feature};

/// Length header plus its checksum.
const HEADER: u64 = 12;
/// Payload checksum.
const FOOTER: u64 = 4;

/// TFRecord's masked CRC-32C (so a checksum of checksums does not collide).
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = CRC32C.checksum(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// A shard that does not frame or checksum correctly.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message} at byte offset {offset}", path.display())]
pub struct FramingError {
    /// The shard file.
    pub path: PathBuf,
    /// Byte offset of the record at fault (its length header).
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

/// Appends framed records to a writer.
pub struct RecordWriter<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> RecordWriter<W> {
    /// Wraps `inner`; offsets count from the first byte this writer writes.
    pub fn new(inner: W) -> Self {
        Self { inner, written: 0 }
    }

    /// Writes one record; returns its byte offset.
    pub fn write(&mut self, payload: &[u8]) -> io::Result<u64> {
        let offset = self.written;
        let length = (payload.len() as u64).to_le_bytes();
        self.inner.write_all(&length)?;
        self.inner.write_all(&masked_crc(&length).to_le_bytes())?;
        self.inner.write_all(payload)?;
        self.inner.write_all(&masked_crc(payload).to_le_bytes())?;
        self.written += HEADER + payload.len() as u64 + FOOTER;
        Ok(offset)
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The underlying writer, for flushing or syncing once the last record is written.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Where one record's payload sits in its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// Offset of the record's length header.
    pub offset: u64,
    /// Payload bytes, without header and footer.
    pub length: u64,
}

/// Walks a shard's headers (checking each length checksum, skipping payloads) and returns
/// every record's span. A shard that ends inside a record is reported with that record's offset.
pub fn scan(path: &Path) -> Result<Vec<RecordSpan>, FramingError> {
    let fail = |offset, message: String| FramingError {
        path: path.to_path_buf(),
        offset,
        message,
    };
    let mut file = File::open(path).map_err(|e| fail(0, e.to_string()))?;
    let size = file.metadata().map_err(|e| fail(0, e.to_string()))?.len();
    let mut spans = Vec::new();
    let mut offset = 0;
    let mut header = [0u8; HEADER as usize];
    while offset < size {
        if size - offset < HEADER {
            return Err(fail(offset, "truncated record header".into()));
        }
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut header))
            .map_err(|e| fail(offset, e.to_string()))?;
        let span = parse_header(&header).map_err(|m| fail(offset, m))?;
        if size - offset - HEADER < span.length + FOOTER {
            return Err(fail(
                offset,
                format!(
                    "truncated record ({} payload bytes announced, shard ends first)",
                    span.length
                ),
            ));
        }
        spans.push(RecordSpan {
            offset,
            length: span.length,
        });
        offset += HEADER + span.length + FOOTER;
    }
    Ok(spans)
}

fn parse_header(header: &[u8; HEADER as usize]) -> Result<RecordSpan, String> {
    let length_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
    let stored = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
    if masked_crc(&length_bytes) != stored {
        return Err("length checksum mismatch (not a TFRecord file, or corrupt)".into());
    }
    Ok(RecordSpan {
        offset: 0,
        length: u64::from_le_bytes(length_bytes),
    })
}

/// Reads the payload of the record at `span`, verifying its checksum.
pub fn read_record(file: &File, path: &Path, span: RecordSpan) -> Result<Vec<u8>, FramingError> {
    let fail = |message: String| FramingError {
        path: path.to_path_buf(),
        offset: span.offset,
        message,
    };
    let mut buf = vec![0u8; (HEADER + span.length + FOOTER) as usize];
    file.read_exact_at(&mut buf, span.offset)
        .map_err(|e| fail(format!("reading the record: {e}")))?;
    let header: &[u8; HEADER as usize] = buf[..HEADER as usize].try_into().expect("12 bytes");
    let parsed = parse_header(header).map_err(fail)?;
    if parsed.length != span.length {
        return Err(fail(
            "record length changed since the shard was indexed".into(),
        ));
    }
    let end = (HEADER + span.length) as usize;
    let stored = u32::from_le_bytes(buf[end..].try_into().expect("4 bytes"));
    if masked_crc(&buf[HEADER as usize..end]) != stored {
        return Err(fail("payload checksum mismatch".into()));
    }
    buf.truncate(end);
    buf.drain(..HEADER as usize);
    Ok(buf)
}

/// One labelled image as `build_imagenet_data.py` stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// `image/encoded`: the original JPEG bytes.
    pub encoded: Vec<u8>,
    /// `image/class/label`: 1–1000 (0 is the background class of 1001-way models).
    pub label: i64,
    /// `image/class/synset`: the class wnid, e.g. `n01440764`.
    pub synset: String,
    /// `image/filename`: the source file's name.
    pub filename: String,
    /// `image/width`, in pixels.
    pub width: i64,
    /// `image/height`, in pixels.
    pub height: i64,
}

impl ImageRecord {
    /// The `tf.train.Example` with build_imagenet_data.py's feature keys.
    pub fn to_example(&self) -> Vec<u8> {
        let bytes = |v: &[u8]| Feature {
            kind: Some(feature::Kind::BytesList(BytesList {
                value: vec![v.to_vec()],
            })),
        };
        let int = |v: i64| Feature {
            kind: Some(feature::Kind::Int64List(Int64List { value: vec![v] })),
        };
        let feature: BTreeMap<String, Feature> = [
            ("image/encoded", bytes(&self.encoded)),
            ("image/format", bytes(b"JPEG")),
            ("image/colorspace", bytes(b"RGB")),
            ("image/channels", int(3)),
            ("image/class/label", int(self.label)),
            ("image/class/synset", bytes(self.synset.as_bytes())),
            ("image/filename", bytes(self.filename.as_bytes())),
            ("image/height", int(self.height)),
            ("image/width", int(self.width)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Example {
            features: Some(Features { feature }),
        }
        .encode_to_vec()
    }

    /// Reads the image and label from an Example; other features are optional.
    pub fn from_example(payload: &[u8]) -> Result<Self, String> {
        let example =
            Example::decode(payload).map_err(|e| format!("not a tf.train.Example: {e}"))?;
        let features = example.features.map(|f| f.feature).unwrap_or_default();
        let bytes = |key: &str| match features.get(key).and_then(|f| f.kind.as_ref()) {
            Some(feature::Kind::BytesList(list)) => list.value.first().cloned(),
            _ => None,
        };
        let int = |key: &str| match features.get(key).and_then(|f| f.kind.as_ref()) {
            Some(feature::Kind::Int64List(list)) => list.value.first().copied(),
            _ => None,
        };
        let text =
            |key: &str| String::from_utf8_lossy(&bytes(key).unwrap_or_default()).into_owned();
        Ok(Self {
            encoded: bytes("image/encoded").ok_or("the Example has no image/encoded bytes")?,
            label: int("image/class/label").ok_or("the Example has no image/class/label")?,
            synset: text("image/class/synset"),
            filename: text("image/filename"),
            width: int("image/width").unwrap_or(0),
            height: int("image/height").unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(dir: &Path, payloads: &[&[u8]]) -> PathBuf {
        let path = dir.join("train-00000-of-00001");
        let mut writer = RecordWriter::new(File::create(&path).unwrap());
        for p in payloads {
            writer.write(p).unwrap();
        }
        path
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // TensorFlow's crc32c_test: masked CRC of "foo" (crc32c 0xcfc4ae1d).
        assert_eq!(CRC32C.checksum(b"foo"), 0xcfc4_ae1d);
        assert_eq!(
            masked_crc(b"foo"),
            0xcfc4_ae1d_u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
        // An empty payload's record footer, as TensorFlow writes it.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = shard(dir.path(), &[b"first", b"", b"third record"]);
        let spans = scan(&path).unwrap();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[1].offset, 12 + 5 + 4);
        let file = File::open(&path).unwrap();
        let read: Vec<Vec<u8>> = spans
            .iter()
            .map(|&s| read_record(&file, &path, s).unwrap())
            .collect();
        assert_eq!(read, [b"first".to_vec(), vec![], b"third record".to_vec()]);
    }

    #[test]
    fn truncation_and_corruption_name_shard_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = shard(dir.path(), &[b"aaaa", b"bbbbbbbb"]);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 3).unwrap();
        let err = scan(&path).unwrap_err().to_string();
        assert!(
            err.contains("train-00000-of-00001") && err.contains("byte offset 20"),
            "{err}"
        );
        assert!(err.contains("truncated"), "{err}");

        let path = shard(dir.path(), &[b"aaaa", b"bbbbbbbb"]);
        let spans = scan(&path).unwrap();
        file_patch(&path, spans[1].offset + HEADER + 2, b'X');
        let err = read_record(&File::open(&path).unwrap(), &path, spans[1]).unwrap_err();
        assert_eq!(err.offset, 20);
        assert!(
            err.to_string().contains("payload checksum mismatch"),
            "{err}"
        );

        file_patch(&path, 3, 0x7F);
        let err = scan(&path).unwrap_err().to_string();
        assert!(
            err.contains("length checksum mismatch") && err.contains("offset 0"),
            "{err}"
        );
    }

    fn file_patch(path: &Path, at: u64, byte: u8) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&[byte], at).unwrap();
    }

    #[test]
    fn examples_round_trip_with_build_imagenet_data_keys() {
        let record = ImageRecord {
            encoded: vec![0xFF, 0xD8, 1, 2, 3],
            label: 417,
            synset: "n02085620".into(),
            filename: "n02085620_7.JPEG".into(),
            width: 500,
            height: 375,
        };
        let payload = record.to_example();
        assert_eq!(ImageRecord::from_example(&payload).unwrap(), record);
        let example = Example::decode(&payload[..]).unwrap();
        let keys = example.features.unwrap().feature;
        assert!(keys.contains_key("image/encoded") && keys.contains_key("image/class/label"));
        assert!(
            ImageRecord::from_example(b"\x0a\x02\x0a\x00")
                .unwrap_err()
                .contains("image/encoded")
        );
    }
}
