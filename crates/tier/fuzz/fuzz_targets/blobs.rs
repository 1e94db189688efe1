//! Fuzzes the blob files of a database: m2m-tier's framing, and the facade's decoders of the payloads
//! (the stored index with its learned kappa and alpha, the learned values, the settings). Any bytes give
//! a value or a typed error, never a panic. The first byte picks the decoder; for the stored index the
//! next 8 bytes also pick a structural change (a column shortened, a count or dimension changed, a NaN,
//! a repeated id...) applied to the decoded value and encoded again, so that mutations of a valid seed
//! reach every consistency check behind the decoding, as a forged file with a valid checksum would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m2m_tier::testing::decode;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    match kind % 4 {
        0 => {
            let Some((choice, payload)) = rest.split_first_chunk::<8>() else { return };
            let _ = m2m::testing::index_blob(payload);
            if let Some(forged) = m2m::testing::mutate_index(payload, u64::from_le_bytes(*choice)) {
                let _ = m2m::testing::index_blob(&forged);
            }
        }
        1 => drop(m2m::testing::learned_blob(rest)),
        2 => drop(m2m::testing::config_blob(rest)),
        _ => {
            let _ = decode::blob(rest);
            let mut sealed = rest.to_vec();
            decode::reseal_manifest(&mut sealed);
            let _ = decode::blob(&sealed);
        }
    }
});
