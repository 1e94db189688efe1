//! The built-in data set: UCI optdigits (as bundled by scikit-learn) and the original project's
//! "digits projected to S^639".
//!
//! The 1,797 images of 8x8 pixels (values 0..=16) are compiled into the crate, gzip-compressed, so the
//! README's main command needs no download. [`digits_on_sphere`] maps them to the unit sphere the way the
//! original project benchmarked: pixels scaled to [0, 1], a fixed random Gaussian projection 64 -> `dim`,
//! normalisation, and resampling to the requested number of rows with small isotropic noise so that rows
//! are distinct. Query rows come from images held out of the base rows, so a query is never a noisy copy
//! of a base row's image.
//!
//! Provenance: UCI Optical Recognition of Handwritten Digits (test set), CC BY 4.0, as shipped in
//! scikit-learn's `load_digits`.

use std::io::Read;

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;

use crate::{Error, Result, normalize_into};

/// Number of images in the data set.
pub const DIGIT_IMAGES: usize = 1797;
/// Pixels per image (8 x 8).
pub const DIGIT_PIXELS: usize = 64;
/// Seed of the fixed projection matrix: the same for every call, so every generated set shares it.
pub const PROJECTION_SEED: u64 = 0x5EED_0640;

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");
const BUILTIN_NAME: &str = "<built-in digits.csv.gz>";

/// The raw images and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Digits {
    /// `DIGIT_IMAGES * DIGIT_PIXELS` pixel intensities in 0..=16, row-major.
    pub pixels: Vec<u8>,
    /// The digit (0..=9) of each image.
    pub labels: Vec<u8>,
}

impl Digits {
    /// Pixels of image `i`.
    ///
    /// # Panics
    /// If `i >= DIGIT_IMAGES`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * DIGIT_PIXELS..(i + 1) * DIGIT_PIXELS]
    }
}

/// Decompresses and parses the built-in images.
///
/// The data is compiled in, so an error here means the build embedded a damaged file; it is reported as
/// [`Error::Corrupt`] naming the line.
pub fn load_digits() -> Result<Digits> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| Error::corrupt(BUILTIN_NAME, 0, format!("gzip: {e}")))?;
    let mut pixels = Vec::with_capacity(DIGIT_IMAGES * DIGIT_PIXELS);
    let mut labels = Vec::with_capacity(DIGIT_IMAGES);
    let mut offset = 0u64;
    for (line_no, line) in text.lines().enumerate() {
        let bad = |reason: String| Error::corrupt(BUILTIN_NAME, offset, format!("line {}: {reason}", line_no + 1));
        let mut fields = 0;
        for field in line.split(',') {
            let v: u8 = field.trim().parse().map_err(|_| bad(format!("`{field}` is not a small integer")))?;
            if fields < DIGIT_PIXELS {
                if v > 16 {
                    return Err(bad(format!("pixel {v} outside 0..=16")));
                }
                pixels.push(v);
            } else if v <= 9 {
                labels.push(v);
            } else {
                return Err(bad(format!("label {v} is not a digit")));
            }
            fields += 1;
        }
        if fields != DIGIT_PIXELS + 1 {
            return Err(bad(format!("{fields} fields, expected {}", DIGIT_PIXELS + 1)));
        }
        offset += line.len() as u64 + 1;
    }
    if labels.len() != DIGIT_IMAGES {
        return Err(Error::corrupt(BUILTIN_NAME, offset, format!("{} images, expected {DIGIT_IMAGES}", labels.len())));
    }
    Ok(Digits { pixels, labels })
}

/// Settings of [`digits_on_sphere`]. Defaults reproduce the original project's benchmark shape.
#[derive(Clone, Debug, PartialEq)]
pub struct DigitsConfig {
    /// Base rows to generate. Default 10,000.
    pub rows: usize,
    /// Query rows to generate, from held-out images. Default 1,000.
    pub queries: usize,
    /// Dimension of the sphere's ambient space. Default 640 (S^639).
    pub dim: usize,
    /// Expected length of the noise added to each projected unit vector before it is normalised again.
    /// Default 0.1.
    pub noise: f32,
    /// Fraction of the images held out for query rows (ignored when `queries` is 0). Default 0.2.
    pub query_image_fraction: f32,
    /// Seed of the split, the resampling and the noise (the projection has its own fixed seed). Default 42.
    pub seed: u64,
}

impl Default for DigitsConfig {
    fn default() -> Self {
        DigitsConfig { rows: 10_000, queries: 1_000, dim: 640, noise: 0.1, query_image_fraction: 0.2, seed: 42 }
    }
}

impl DigitsConfig {
    /// Sets the number of base rows.
    pub fn rows(mut self, rows: usize) -> Self {
        self.rows = rows;
        self
    }

    /// Sets the number of query rows.
    pub fn queries(mut self, queries: usize) -> Self {
        self.queries = queries;
        self
    }

    /// Sets the dimension.
    pub fn dim(mut self, dim: usize) -> Self {
        self.dim = dim;
        self
    }

    /// Sets the noise length.
    pub fn noise(mut self, noise: f32) -> Self {
        self.noise = noise;
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn check(&self) -> Result<()> {
        let invalid = |what, reason: &str| Err(Error::InvalidConfig { what, reason: reason.to_owned() });
        if self.dim == 0 {
            return Err(Error::ZeroDimension);
        }
        if self.rows == 0 {
            return invalid("rows", "at least one base row is required");
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return invalid("noise", "must be finite and >= 0");
        }
        let f = self.query_image_fraction;
        if self.queries > 0 && !(f > 0.0 && f < 1.0) {
            return invalid("query_image_fraction", "must lie strictly between 0 and 1");
        }
        Ok(())
    }
}

/// Digits on the unit sphere: base rows and held-out query rows, with labels.
#[derive(Clone, Debug, PartialEq)]
pub struct DigitsSphere {
    /// Dimension of every row.
    pub dim: usize,
    /// Base rows, unit norm, row-major.
    pub base: Vec<f32>,
    /// Digit of each base row.
    pub base_labels: Vec<u8>,
    /// Index (into [`load_digits`]) of the image each base row was made from.
    pub base_images: Vec<u32>,
    /// Query rows, unit norm, row-major, made only from images no base row uses.
    pub queries: Vec<f32>,
    /// Digit of each query row.
    pub query_labels: Vec<u8>,
}

/// The fixed projection: `DIGIT_PIXELS x dim` standard normal entries, row-major, from [`PROJECTION_SEED`].
fn projection(dim: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(PROJECTION_SEED);
    (0..DIGIT_PIXELS * dim).map(|_| rng.sample(StandardNormal)).collect()
}

/// Generates "digits projected to S^(dim-1)"; deterministic for a given config.
///
/// Errors: [`Error::ZeroDimension`], [`Error::InvalidConfig`] for zero rows, a negative or non-finite noise,
/// or a held-out fraction outside (0, 1).
pub fn digits_on_sphere(config: &DigitsConfig) -> Result<DigitsSphere> {
    config.check()?;
    let digits = load_digits()?;
    let dim = config.dim;
    let proj = projection(dim);
    let mut rng = StdRng::seed_from_u64(config.seed);

    // Split the images: a shuffled order, the first ones held out for queries.
    let mut order: Vec<u32> = (0..DIGIT_IMAGES as u32).collect();
    order.shuffle(&mut rng);
    let held_out = if config.queries == 0 {
        0
    } else {
        ((DIGIT_IMAGES as f32 * config.query_image_fraction).round() as usize).clamp(1, DIGIT_IMAGES - 1)
    };
    let (query_pool, base_pool) = order.split_at(held_out);

    // Project every image once onto the sphere.
    let mut unit = vec![0.0f32; DIGIT_IMAGES * dim];
    for (i, out) in unit.chunks_exact_mut(dim).enumerate() {
        for (p, &pixel) in digits.image(i).iter().enumerate() {
            let x = f32::from(pixel) / 16.0;
            if x != 0.0 {
                for (o, w) in out.iter_mut().zip(&proj[p * dim..(p + 1) * dim]) {
                    *o += x * w;
                }
            }
        }
        let raw = out.to_vec();
        // Every image has some ink, so the projection is non-zero (with probability 1).
        normalize_into(&raw, out, i)?;
    }

    let sigma = config.noise / (dim as f32).sqrt();
    let sample = |pool: &[u32], n: usize, rng: &mut StdRng| -> Result<(Vec<f32>, Vec<u8>, Vec<u32>)> {
        let mut rows = vec![0.0f32; n * dim];
        let mut labels = Vec::with_capacity(n);
        let mut images = Vec::with_capacity(n);
        let mut noisy = vec![0.0f32; dim];
        for (r, out) in rows.chunks_exact_mut(dim).enumerate() {
            // Cycle through the shuffled pool so every image is used before any is used twice.
            let image = pool[r % pool.len()] as usize;
            for (y, &u) in noisy.iter_mut().zip(&unit[image * dim..(image + 1) * dim]) {
                let e: f32 = rng.sample(StandardNormal);
                *y = u + sigma * e;
            }
            normalize_into(&noisy, out, r)?;
            labels.push(digits.labels[image]);
            images.push(image as u32);
        }
        Ok((rows, labels, images))
    };
    let (base, base_labels, base_images) = sample(base_pool, config.rows, &mut rng)?;
    let (queries, query_labels, _) =
        if config.queries > 0 { sample(query_pool, config.queries, &mut rng)? } else { Default::default() };
    Ok(DigitsSphere { dim, base, base_labels, base_images, queries, query_labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_digits_parse_with_all_ten_labels() {
        let d = load_digits().unwrap();
        assert_eq!(d.pixels.len(), DIGIT_IMAGES * DIGIT_PIXELS);
        let mut counts = [0usize; 10];
        for &l in &d.labels {
            counts[l as usize] += 1;
        }
        // optdigits' test set holds between 174 and 183 images of each digit.
        assert!(counts.iter().all(|&c| (170..=190).contains(&c)), "{counts:?}");
        assert!(d.pixels.iter().all(|&p| p <= 16));
    }

    fn small() -> DigitsConfig {
        DigitsConfig::default().rows(2_000).queries(200).dim(128)
    }

    #[test]
    fn rows_are_unit_distinct_and_deterministic() {
        let a = digits_on_sphere(&small()).unwrap();
        let b = digits_on_sphere(&small()).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.base.len(), a.queries.len()), (2_000 * 128, 200 * 128));
        for row in a.base.chunks_exact(128).chain(a.queries.chunks_exact(128)) {
            let n: f64 = row.iter().map(|&x| f64::from(x).powi(2)).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        let mut rows: Vec<&[f32]> = a.base.chunks_exact(128).collect();
        rows.sort_by(|x, y| x.partial_cmp(y).unwrap());
        rows.dedup();
        assert_eq!(rows.len(), 2_000, "generated rows are not distinct");
        let c = digits_on_sphere(&small().seed(7)).unwrap();
        assert_ne!(a.base, c.base);
    }

    #[test]
    fn queries_use_held_out_images_and_keep_digit_structure() {
        let d = digits_on_sphere(&small()).unwrap();
        let used: std::collections::HashSet<u32> = d.base_images.iter().copied().collect();
        // Default fraction 0.2: 359 images held out, the rest (1438) all used by 2,000 base rows.
        assert_eq!(used.len(), DIGIT_IMAGES - 359);
        // The projection keeps what makes digits recognisable: the nearest base row of a held-out query
        // (exact cosine, computed here in f64) mostly has the same label. Chance would be about 0.1.
        let dim = d.dim;
        let mut agree = 0;
        for (q, &label) in d.queries.chunks_exact(dim).zip(&d.query_labels) {
            let best = d
                .base
                .chunks_exact(dim)
                .map(|b| b.iter().zip(q).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>())
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .unwrap()
                .0;
            agree += usize::from(d.base_labels[best] == label);
        }
        assert!(agree >= 180, "1-NN label agreement {agree}/200");
    }

    #[test]
    fn the_projection_is_fixed_across_seeds() {
        assert_eq!(projection(16), projection(16));
        // Noise 0 and different seeds: the same image gives the same row, whatever the seed.
        let a = digits_on_sphere(&DigitsConfig::default().rows(1797).queries(0).dim(32).noise(0.0)).unwrap();
        let b = digits_on_sphere(&DigitsConfig::default().rows(1797).queries(0).dim(32).noise(0.0).seed(9)).unwrap();
        let row_of = |d: &DigitsSphere, img: u32| {
            let r = d.base_images.iter().position(|&i| i == img).unwrap();
            d.base[r * 32..(r + 1) * 32].to_vec()
        };
        assert_eq!(row_of(&a, 5), row_of(&b, 5));
    }

    #[test]
    fn bad_configs_are_rejected() {
        let c = DigitsConfig::default();
        assert!(matches!(digits_on_sphere(&c.clone().dim(0)), Err(Error::ZeroDimension)));
        assert!(matches!(digits_on_sphere(&c.clone().rows(0)), Err(Error::InvalidConfig { what: "rows", .. })));
        assert!(matches!(digits_on_sphere(&c.clone().noise(-1.0)), Err(Error::InvalidConfig { what: "noise", .. })));
        let mut f = c.clone();
        f.query_image_fraction = 1.0;
        assert!(matches!(digits_on_sphere(&f), Err(Error::InvalidConfig { what: "query_image_fraction", .. })));
    }
}
