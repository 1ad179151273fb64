//! SHA-256 of the short values normalization produces, without the streaming hasher.
//!
//! Nearly every normalized value is at most 55 bytes, so its padded message is one 64-byte
//! block: written straight into a stack buffer and compressed once, it skips the streaming
//! state's buffering and bookkeeping. The block function is the sha2 crate's (SHA-NI where the
//! CPU has it).

use sha2::digest::generic_array::GenericArray;

/// The SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Most bytes whose padded message fits one block (a 0x80 byte and the 8-byte length follow).
pub(super) const ONE_BLOCK: usize = 55;

/// SHA-256 of `data`.
pub(super) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut state = H0;
    let full = data.len() / 64 * 64;
    for block in data[..full].chunks_exact(64) {
        compress(&mut state, block);
    }
    // The tail, the 0x80 marker and the bit length take one block, or two past 55 bytes.
    let tail = &data[full..];
    let mut last = [0u8; 128];
    last[..tail.len()].copy_from_slice(tail);
    last[tail.len()] = 0x80;
    let end = if tail.len() <= ONE_BLOCK { 64 } else { 128 };
    last[end - 8..end].copy_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in last[..end].chunks_exact(64) {
        compress(&mut state, block);
    }
    digest_bytes(&state)
}

fn compress(state: &mut [u32; 8], block: &[u8]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

fn digest_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use sha2::{Digest, Sha256};

    fn reference(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn equals_the_streaming_hasher_for_random_inputs_of_every_length() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5a256);
        let mut data = vec![0u8; 300];
        for len in 0..=300 {
            for _ in 0..40 {
                rng.fill(&mut data[..len]);
                assert_eq!(
                    sha256(&data[..len]),
                    reference(&data[..len]),
                    "length {len}"
                );
            }
        }
    }

    #[test]
    fn equals_the_streaming_hasher_around_block_boundaries() {
        // Each byte value in every position near the 55/56/64/119/120/128-byte edges, where
        // the padding changes shape.
        for len in (50..=70).chain(115..=135).chain(185..=195) {
            for fill in [0x00u8, 0x80, 0xff, b'a'] {
                let data = vec![fill; len];
                assert_eq!(sha256(&data), reference(&data), "length {len} of {fill:#x}");
            }
        }
    }

    #[test]
    fn known_vectors() {
        let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }
}
