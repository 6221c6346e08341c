//! XXH64, the hash Envoy uses for request hashes, ring entries, Maglev permutations and
//! generated cookies (`HashUtil::xxHash64`). Written out from the xxHash specification
//! rather than taken as a dependency: it is 60 lines, and placement must match Envoy's
//! bit for bit. The test vectors come from the reference C library (libxxhash 0.8.1).

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(acc: u64, v: u64) -> u64 {
    (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
}

fn u64_at(b: &[u8]) -> u64 {
    let mut lane = [0; 8];
    lane.copy_from_slice(&b[..8]);
    u64::from_le_bytes(lane)
}

fn u32_at(b: &[u8]) -> u64 {
    let mut lane = [0; 4];
    lane.copy_from_slice(&b[..4]);
    u64::from(u32::from_le_bytes(lane))
}

/// XXH64 of `input` with `seed`.
pub fn xxh64(input: &[u8], seed: u64) -> u64 {
    let mut rest = input;
    let mut h = if input.len() >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (i, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, u64_at(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        v.iter().fold(h, |h, &acc| merge(h, acc))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(input.len() as u64);
    while rest.len() >= 8 {
        h = (h ^ round(0, u64_at(rest)))
            .rotate_left(27)
            .wrapping_mul(P1)
            .wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h = (h ^ u32_at(rest).wrapping_mul(P1))
            .rotate_left(23)
            .wrapping_mul(P2)
            .wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        h = (h ^ u64::from(byte).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// Envoy's hash of several values (`HashUtil::xxHash64(Span<string_view>)`): each value
/// is hashed with the previous hash as its seed, starting from 0.
pub fn xxh64_chain<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    values.into_iter().fold(0, |seed, v| xxh64(v, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_library() {
        // Lengths 0, 1, 3, 6, 8, 15, 39, 53 and 62 cover the single-byte, 4-byte and
        // 8-byte tails and the 32-byte stripes.
        let cases: [(&[u8], u64, u64); 9] = [
            (b"", 0, 0xef46_db37_51d8_e999),
            (b"a", 0, 0xd24e_c4f1_a98c_6e5b),
            (b"abc", 0, 0x44bc_2cf5_ad77_0999),
            (b"xxhash", 20, 0x48b3_5aa9_8dc0_4f56),
            (b"12345678", 1, 0x339c_66ff_5360_00b7),
            (b"10.0.0.1:8080_0", 0, 0x23a2_9ae7_75df_d4a3),
            (
                b"Nobody inspects the spammish repetition",
                0,
                0xfbce_a83c_8a37_8bf1,
            ),
            (
                b"0123456789abcdef0123456789abcdef0123456789abcdef01234",
                P1,
                0xde2d_2161_85a7_447c,
            ),
            (
                b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                0,
                0xd500_0c4a_c53d_14a0,
            ),
        ];
        for (input, seed, want) in cases {
            assert_eq!(
                xxh64(input, seed),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn chaining_seeds_each_value_with_the_previous_hash() {
        assert_eq!(xxh64_chain([&b"abc"[..]]), xxh64(b"abc", 0));
        assert_eq!(xxh64_chain([&b"a"[..], b"b"]), xxh64(b"b", xxh64(b"a", 0)));
        assert_ne!(xxh64_chain([&b"a"[..], b"b"]), xxh64(b"ab", 0));
    }
}
