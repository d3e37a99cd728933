//! The pure part of the mixer: RTP framing and mix-minus.
//!
//! Frames are RTP (RFC 3550): a 12-byte header (version 2, payload type
//! 11 = L16, sequence number, timestamp, SSRC) followed by 16-bit PCM in
//! network byte order (RFC 3551 L16). Every participant hears the sum of
//! all the others: the sum of everyone is taken once per sample in `i32`
//! (exact for up to 65536 participants), then each participant's own
//! sample is subtracted and the result saturated to `i16` — so the output
//! is exactly the saturated sum of the others, in O(N·S) rather than
//! O(N²·S).

#![allow(dead_code)]

/// Bytes of an RTP header without CSRCs or extensions.
pub(crate) const RTP_HEADER: usize = 12;
/// RTP payload type of L16 mono (RFC 3551).
pub(crate) const PT_L16: u8 = 11;

/// Writes an RTP header into `out[..12]`. Returns `false` (writing
/// nothing) if `out` is shorter.
pub(crate) fn write_header(out: &mut [u8], seq: u16, ts: u32, ssrc: u32) -> bool {
    let Some(h) = out.get_mut(..RTP_HEADER) else {
        return false;
    };
    h[0] = 0x80; // V=2, no padding, no extension, no CSRC
    h[1] = PT_L16;
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&ts.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    true
}

/// The sequence number of an RTP packet with `samples` L16 samples, or
/// `None` if it is not one (short, wrong version, wrong length).
pub(crate) fn frame_seq(pkt: &[u8], samples: usize) -> Option<u16> {
    if pkt.len() != RTP_HEADER + 2 * samples || pkt[0] >> 6 != 2 {
        return None;
    }
    Some(u16::from_be_bytes([pkt[2], pkt[3]]))
}

/// The PCM part of an RTP packet (everything after the fixed header).
pub(crate) fn pcm(pkt: &[u8]) -> &[u8] {
    pkt.get(RTP_HEADER..).unwrap_or(&[])
}

/// `acc[s] += sample s of pcm_be` (big-endian i16) for every sample both
/// hold.
#[inline]
pub(crate) fn accumulate(acc: &mut [i32], pcm_be: &[u8]) {
    for (a, b) in acc.iter_mut().zip(pcm_be.chunks_exact(2)) {
        *a += i32::from(i16::from_be_bytes([b[0], b[1]]));
    }
}

/// `out_be[s] = saturate(acc[s] - own[s])` as big-endian i16, where `own`
/// is the participant's own contribution to `acc` (`None`: silence, it
/// contributed nothing).
#[inline]
pub(crate) fn minus_own(acc: &[i32], own_be: Option<&[u8]>, out_be: &mut [u8]) {
    match own_be {
        Some(own) => {
            for ((o, a), b) in out_be.chunks_exact_mut(2).zip(acc).zip(own.chunks_exact(2)) {
                let v = *a - i32::from(i16::from_be_bytes([b[0], b[1]]));
                o.copy_from_slice(&saturate(v).to_be_bytes());
            }
        }
        None => {
            for (o, a) in out_be.chunks_exact_mut(2).zip(acc) {
                o.copy_from_slice(&saturate(*a).to_be_bytes());
            }
        }
    }
}

/// Clamps to the i16 range.
#[inline]
pub(crate) fn saturate(v: i32) -> i16 {
    v.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

/// Reference mix-minus on native samples, for tests: `out[p][s]` =
/// saturated sum over `q != p` of `inputs[q][s]` (a `None` input is
/// silence).
pub(crate) fn mix_minus_reference(inputs: &[Option<Vec<i16>>], samples: usize) -> Vec<Vec<i16>> {
    (0..inputs.len())
        .map(|p| {
            (0..samples)
                .map(|s| {
                    let sum: i64 = inputs
                        .iter()
                        .enumerate()
                        .filter(|(q, _)| *q != p)
                        .filter_map(|(_, i)| i.as_ref().map(|v| i64::from(v[s])))
                        .sum();
                    sum.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16
                })
                .collect()
        })
        .collect()
}
