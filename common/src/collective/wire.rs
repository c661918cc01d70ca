//! Element formats on the wire: gradients travel as `f32`, or halved in size as `f16` or `bf16`
//! (compression trades precision for bandwidth on slow links). Reduction always happens in `f32`.

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};

/// How all-reduce encodes values between ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFormat {
    /// Exact: 4 bytes per value.
    #[default]
    F32,
    /// IEEE half precision: 2 bytes, 11-bit mantissa, range ±65504.
    F16,
    /// bfloat16: 2 bytes, 8-bit mantissa, the range of `f32`.
    Bf16,
}

impl WireFormat {
    /// Every format, in the order of their codes.
    pub const ALL: [WireFormat; 3] = [WireFormat::F32, WireFormat::F16, WireFormat::Bf16];

    /// Bytes one value takes on the wire.
    pub fn bytes_per_value(self) -> usize {
        match self {
            WireFormat::F32 => 4,
            WireFormat::F16 | WireFormat::Bf16 => 2,
        }
    }

    /// The code sent in message headers, so ranks that disagree on the format fail loudly.
    pub(crate) fn code(self) -> u8 {
        match self {
            WireFormat::F32 => 0,
            WireFormat::F16 => 1,
            WireFormat::Bf16 => 2,
        }
    }

    /// The format a message header names, if any.
    pub(crate) fn from_code(code: u32) -> Option<WireFormat> {
        WireFormat::ALL
            .into_iter()
            .find(|format| u32::from(format.code()) == code)
    }

    /// Writes `values` in this format into `out` (`values.len() * bytes_per_value()` bytes).
    pub(crate) fn encode(self, values: &[f32], out: &mut [u8]) {
        debug_assert_eq!(out.len(), values.len() * self.bytes_per_value());
        match self {
            WireFormat::F32 => out.copy_from_slice(bytemuck::cast_slice(values)),
            WireFormat::F16 => encode_halves(values, out, |v| f16::from_f32(v).to_bits()),
            WireFormat::Bf16 => encode_halves(values, out, |v| bf16::from_f32(v).to_bits()),
        }
    }

    /// Adds the values encoded in `bytes` into `acc`.
    pub(crate) fn add_decoded(self, bytes: &[u8], acc: &mut [f32]) {
        self.for_each_decoded(bytes, acc, |a, v| *a += v);
    }

    /// Overwrites `out` with the values encoded in `bytes`.
    pub(crate) fn decode(self, bytes: &[u8], out: &mut [f32]) {
        self.for_each_decoded(bytes, out, |o, v| *o = v);
    }

    /// Rounds `values` in place to what this format can carry, so that the rank that owns a
    /// reduced chunk keeps exactly the values its peers decode.
    pub(crate) fn round_in_place(self, values: &mut [f32]) {
        match self {
            WireFormat::F32 => {}
            WireFormat::F16 => values
                .iter_mut()
                .for_each(|v| *v = f16::from_f32(*v).to_f32()),
            WireFormat::Bf16 => values
                .iter_mut()
                .for_each(|v| *v = bf16::from_f32(*v).to_f32()),
        }
    }

    fn for_each_decoded(self, bytes: &[u8], out: &mut [f32], apply: impl Fn(&mut f32, f32)) {
        debug_assert_eq!(bytes.len(), out.len() * self.bytes_per_value());
        match self {
            WireFormat::F32 => out
                .iter_mut()
                .zip(bytes.chunks_exact(4))
                .for_each(|(o, b)| apply(o, f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            WireFormat::F16 => out
                .iter_mut()
                .zip(bytes.chunks_exact(2))
                .for_each(|(o, b)| {
                    apply(o, f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                }),
            WireFormat::Bf16 => out
                .iter_mut()
                .zip(bytes.chunks_exact(2))
                .for_each(|(o, b)| {
                    apply(
                        o,
                        bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
                    )
                }),
        }
    }
}

fn encode_halves(values: &[f32], out: &mut [u8], bits: impl Fn(f32) -> u16) {
    for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&bits(*v).to_le_bytes());
    }
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireFormat::F32 => "f32",
            WireFormat::F16 => "f16",
            WireFormat::Bf16 => "bf16",
        })
    }
}

impl FromStr for WireFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(WireFormat::F32),
            "f16" => Ok(WireFormat::F16),
            "bf16" => Ok(WireFormat::Bf16),
            other => Err(format!("unknown wire format {other:?} (f32, f16 or bf16)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_equals_rounding() {
        let values = [0.0, -1.5, 3.140_625, 1e-3, 65_000.0, -2.0e30, 7.0e-8];
        for format in WireFormat::ALL {
            let mut bytes = vec![0; values.len() * format.bytes_per_value()];
            format.encode(&values, &mut bytes);
            let mut decoded = [0.0; 7];
            format.decode(&bytes, &mut decoded);
            let mut rounded = values;
            format.round_in_place(&mut rounded);
            assert_eq!(decoded, rounded, "{format}");
            let mut summed = [1.0; 7];
            format.add_decoded(&bytes, &mut summed);
            let want: Vec<f32> = rounded.iter().map(|v| 1.0 + v).collect();
            assert_eq!(summed.to_vec(), want, "{format}");
        }
        let mut exact = values;
        WireFormat::F32.round_in_place(&mut exact);
        assert_eq!(exact, values);
    }

    #[test]
    fn parses_what_it_prints() {
        for format in WireFormat::ALL {
            assert_eq!(format.to_string().parse::<WireFormat>(), Ok(format));
        }
        assert!("fp8".parse::<WireFormat>().unwrap_err().contains("fp8"));
    }
}
