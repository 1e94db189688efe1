//! Level-of-detail names: one vocabulary for Rust, Python and the CLI.

use m2m_index::{Error, Lod};

#[test]
fn every_level_parses_by_number_and_by_name_in_any_case() {
    for lod in [Lod::Centroids, Lod::Codes, Lod::Rerank, Lod::Exact] {
        assert_eq!(lod.level().to_string().parse::<Lod>().unwrap(), lod);
        assert_eq!(lod.name().parse::<Lod>().unwrap(), lod);
        assert_eq!(lod.name().to_uppercase().parse::<Lod>().unwrap(), lod);
        assert_eq!(lod.to_string(), lod.name());
        assert_eq!(Lod::from_level(lod.level()), lod);
    }
    assert_eq!("reranked".parse::<Lod>().unwrap(), Lod::Rerank);
}

#[test]
fn unknown_levels_are_refused_with_what_was_given() {
    for bad in ["4", "-1", "fast", ""] {
        let err = bad.parse::<Lod>().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { what: "lod", .. }), "{bad}: {err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}
