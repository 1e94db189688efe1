//! The small metadata types serialise with postcard and come back equal.

use m2m_splat::{Batch, ElementType, Metric, SplatSet, SplatSetInfo, VectorFileInfo, VectorFormat};
use serde::{Serialize, de::DeserializeOwned};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
    let bytes = postcard::to_allocvec(&value).unwrap();
    assert_eq!(postcard::from_bytes::<T>(&bytes).unwrap(), value);
}

#[test]
fn metadata_round_trips_through_postcard() {
    for m in [Metric::Cosine, Metric::InnerProduct, Metric::L2] {
        round_trip(m);
    }
    round_trip(VectorFileInfo { format: VectorFormat::Npy, element: ElementType::I32, rows: 1 << 40, dim: 384 });
    let mut set = SplatSet::new(2).unwrap();
    set.append(Batch::new(&[1.0, 0.0, 0.0, 1.0], 2).ids(&[5, 900])).unwrap();
    let info = set.info();
    assert_eq!(info, SplatSetInfo { dim: 2, len: 2, next_id: 901 });
    round_trip(info);
}

#[test]
fn truncated_metadata_is_an_error() {
    let bytes = postcard::to_allocvec(&SplatSetInfo { dim: 640, len: 10_000, next_id: 10_000 }).unwrap();
    assert!(postcard::from_bytes::<SplatSetInfo>(&bytes[..bytes.len() - 1]).is_err());
}
