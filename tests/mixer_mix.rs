//! The mixer's pure mixing function: every participant gets exactly the
//! saturated sum of all the others, for known inputs.

#[path = "../examples/mixer/mix.rs"]
mod mix;

/// Runs the mixer's two passes (accumulate everyone, then subtract own)
/// on native inputs through the wire format, as the bridge does.
fn mix_via_wire(inputs: &[Option<Vec<i16>>], samples: usize) -> Vec<Vec<i16>> {
    let wire: Vec<Option<Vec<u8>>> = inputs
        .iter()
        .map(|i| {
            i.as_ref()
                .map(|v| v.iter().flat_map(|s| s.to_be_bytes()).collect())
        })
        .collect();
    let mut acc = vec![0i32; samples];
    for w in wire.iter().flatten() {
        mix::accumulate(&mut acc, w);
    }
    wire.iter()
        .map(|own| {
            let mut out = vec![0u8; 2 * samples];
            mix::minus_own(&acc, own.as_deref(), &mut out);
            out.chunks_exact(2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .collect()
        })
        .collect()
}

#[test]
fn three_known_participants() {
    let a = vec![100i16, -200, 300, 0];
    let b = vec![1000i16, 2000, -3000, 1];
    let c = vec![-7i16, 7, 0, 32767];
    let got = mix_via_wire(&[Some(a), Some(b), Some(c)], 4);
    assert_eq!(got[0], vec![993, 2007, -3000, 32767]); // b + c (saturated)
    assert_eq!(got[1], vec![93, -193, 300, 32767]); // a + c
    assert_eq!(got[2], vec![1100, 1800, -2700, 1]); // a + b
}

#[test]
fn saturates_both_ways_and_never_wraps() {
    let hi = vec![30000i16; 3];
    let lo = vec![-30000i16; 3];
    let got = mix_via_wire(&[Some(hi.clone()), Some(hi.clone()), Some(hi)], 3);
    assert!(
        got.iter().all(|o| o == &vec![i16::MAX; 3]),
        "60000 clamps to 32767"
    );
    let got = mix_via_wire(&[Some(lo.clone()), Some(lo.clone()), Some(lo)], 3);
    assert!(
        got.iter().all(|o| o == &vec![i16::MIN; 3]),
        "-60000 clamps to -32768"
    );
    // The total overflows i16 but the sum of the others does not: exact.
    let got = mix_via_wire(
        &[Some(vec![32767]), Some(vec![32767]), Some(vec![-32768])],
        1,
    );
    assert_eq!(got, vec![vec![-1], vec![-1], vec![i16::MAX]]);
}

#[test]
fn missing_participants_are_silence_and_hear_everyone() {
    let got = mix_via_wire(&[Some(vec![5, 6]), None, Some(vec![-1, 1])], 2);
    assert_eq!(got[0], vec![-1, 1]);
    assert_eq!(
        got[1],
        vec![4, 7],
        "a silent participant hears all the others"
    );
    assert_eq!(got[2], vec![5, 6]);
}

#[test]
fn matches_the_reference_on_pseudo_random_inputs() {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for n in [1usize, 2, 5, 17, 100] {
        let samples = 160;
        let inputs: Vec<Option<Vec<i16>>> = (0..n)
            .map(|p| {
                (p % 7 != 3).then(|| {
                    (0..samples)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as i16
                        })
                        .collect()
                })
            })
            .collect();
        assert_eq!(
            mix_via_wire(&inputs, samples),
            mix::mix_minus_reference(&inputs, samples),
            "n = {n}"
        );
    }
}

#[test]
fn rtp_header_roundtrip_and_validation() {
    let samples = 160;
    let mut pkt = vec![0u8; mix::RTP_HEADER + 2 * samples];
    assert!(mix::write_header(&mut pkt, 0xBEEF, 1234, 7));
    assert_eq!(mix::frame_seq(&pkt, samples), Some(0xBEEF));
    assert_eq!(mix::frame_seq(&pkt[..100], samples), None, "wrong length");
    pkt[0] = 0x40; // version 1
    assert_eq!(mix::frame_seq(&pkt, samples), None);
    assert!(!mix::write_header(&mut [0u8; 11], 0, 0, 0));
    assert_eq!(mix::pcm(&pkt).len(), 2 * samples);
}
