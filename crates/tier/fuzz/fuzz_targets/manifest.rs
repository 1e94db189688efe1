//! Fuzzes the manifest decoder of m2m-tier: any bytes give a value or a typed error, never a panic; the same
//! bytes with their checksums recomputed reach the checks behind the checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m2m_tier::testing::decode;

fuzz_target!(|data: &[u8]| {
    let _ = decode::manifest(data);
    let mut sealed = data.to_vec();
    decode::reseal_manifest(&mut sealed);
    let _ = decode::manifest(&sealed);
});
