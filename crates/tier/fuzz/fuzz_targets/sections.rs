//! Fuzzes the section-file decoder of m2m-tier (the stored index's files): any bytes give a value or a
//! typed error, never a panic; the same bytes with their checksums recomputed reach the checks behind the
//! checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m2m_tier::testing::decode;

fuzz_target!(|data: &[u8]| {
    let _ = decode::sections(data);
    let mut sealed = data.to_vec();
    decode::reseal_sections(&mut sealed);
    let _ = decode::sections(&sealed);
});
