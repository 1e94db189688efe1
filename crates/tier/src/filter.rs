//! Filter expressions over the attribute columns ([`Filter`]) and their evaluation into the ids of the
//! matching rows, through per-field indexes kept in RAM beside the [`AttrTable`]: sorted (value, row)
//! pairs for integers, timestamps and floats (equality and ranges by binary search), a map from value to
//! rows for keywords and tags, row lists for booleans and for nulls. They are rebuilt from the columns on
//! the first filter after a change (not stored: they are small and quick to sort), and each condition
//! becomes a bitmap over the table's rows, combined by and / or / not.
//!
//! The JSON form (serde) is the plain one Python and the CLI use, for example
//! `{"and": [{"eq": {"field": "label", "value": 3}}, {"range": {"field": "t", "gte": 10}}]}`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::attrs::{AttrTable, Column, FieldType, Schema};
use crate::{Error, Result};

/// A constant in a filter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (keyword or tag).
    Str(String),
}

/// A condition on the attributes of a row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// The field equals the value (label, int, timestamp, float, bool, keyword).
    Eq {
        /// The field.
        field: String,
        /// The value.
        value: Scalar,
    },
    /// The field equals one of the values.
    In {
        /// The field.
        field: String,
        /// The values.
        values: Vec<Scalar>,
    },
    /// The field lies in the range (label, int, timestamp, float); absent bounds are open.
    Range {
        /// The field.
        field: String,
        /// Greater than or equal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gte: Option<Scalar>,
        /// Strictly greater.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gt: Option<Scalar>,
        /// Less than or equal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lte: Option<Scalar>,
        /// Strictly less.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lt: Option<Scalar>,
    },
    /// The tags field holds this tag.
    Tag {
        /// The field.
        field: String,
        /// The tag.
        value: String,
    },
    /// The field has no value (any type).
    IsNull {
        /// The field.
        field: String,
    },
    /// Every condition holds (true when empty).
    And(Vec<Filter>),
    /// One condition holds (false when empty).
    Or(Vec<Filter>),
    /// The condition does not hold (rows where the field is null included).
    Not(Box<Filter>),
}

/// Deepest nesting of and / or / not accepted (a deeper filter is refused, not evaluated by recursion).
pub const MAX_DEPTH: usize = 64;

fn bad(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidFilter { field: field.to_string(), reason: reason.into() }
}

/// A value as the column of `ty` holds it, or why it cannot be compared with it.
#[derive(Clone, Debug, PartialEq)]
enum Key {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

fn key(field: &str, ty: FieldType, v: &Scalar) -> Result<Key> {
    match (ty, v) {
        (FieldType::Label | FieldType::Int | FieldType::Timestamp, Scalar::Int(i)) => Ok(Key::Int(*i)),
        (FieldType::Float, Scalar::Int(i)) => Ok(Key::Float(*i as f64)),
        (FieldType::Float, Scalar::Float(x)) if x.is_finite() => Ok(Key::Float(*x)),
        (FieldType::Bool, Scalar::Bool(b)) => Ok(Key::Bool(*b)),
        (FieldType::Keyword | FieldType::Tags, Scalar::Str(s)) => Ok(Key::Str(s.clone())),
        (FieldType::Payload, _) => Err(bad(field, "a payload is opaque: only is_null applies")),
        (ty, v) => Err(bad(field, format!("{v:?} is not a value of a field of type {ty:?}"))),
    }
}

impl Filter {
    /// Shorthand for [`Filter::Eq`].
    pub fn eq(field: impl Into<String>, value: Scalar) -> Filter {
        Filter::Eq { field: field.into(), value }
    }

    /// Shorthand for a [`Filter::Range`] `lo <= field < hi` (either bound open when `None`).
    pub fn range(field: impl Into<String>, lo: Option<Scalar>, hi: Option<Scalar>) -> Filter {
        Filter::Range { field: field.into(), gte: lo, gt: None, lte: None, lt: hi }
    }

    /// Checks the filter against `schema`: every field known, every value of its field's type, each
    /// condition one the field's type supports, the nesting at most [`MAX_DEPTH`].
    /// Errors: [`Error::InvalidFilter`], naming the field.
    pub fn check(&self, schema: &Schema) -> Result<()> {
        self.check_at(schema, 0)
    }

    fn check_at(&self, schema: &Schema, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(bad("", format!("nested deeper than {MAX_DEPTH}")));
        }
        let field = |name: &str| {
            schema.field(name).map(|(_, t)| t).ok_or_else(|| {
                let known: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
                bad(name, format!("unknown field (the schema has {known:?})"))
            })
        };
        match self {
            Filter::Eq { field: f, value } => {
                let ty = field(f)?;
                if ty == FieldType::Tags {
                    return Err(bad(f, "a tags field takes `tag`, not `eq`"));
                }
                key(f, ty, value).map(drop)
            }
            Filter::In { field: f, values } => {
                let ty = field(f)?;
                if ty == FieldType::Tags {
                    return Err(bad(f, "a tags field takes `tag`, not `in`"));
                }
                values.iter().try_for_each(|v| key(f, ty, v).map(drop))
            }
            Filter::Range { field: f, gte, gt, lte, lt } => {
                let ty = field(f)?;
                if !matches!(ty, FieldType::Label | FieldType::Int | FieldType::Timestamp | FieldType::Float) {
                    return Err(bad(f, format!("a range needs a numeric field, not {ty:?}")));
                }
                [gte, gt, lte, lt].into_iter().flatten().try_for_each(|v| key(f, ty, v).map(drop))
            }
            Filter::Tag { field: f, .. } => match field(f)? {
                FieldType::Tags => Ok(()),
                ty => Err(bad(f, format!("`tag` needs a tags field, not {ty:?}"))),
            },
            Filter::IsNull { field: f } => field(f).map(drop),
            Filter::And(v) | Filter::Or(v) => v.iter().try_for_each(|c| c.check_at(schema, depth + 1)),
            Filter::Not(c) => c.check_at(schema, depth + 1),
        }
    }
}

/// The per-field indexes of an [`AttrTable`] (one entry per field, in schema order).
#[derive(Clone, Debug, Default)]
pub struct Postings {
    fields: Vec<FieldPostings>,
}

#[derive(Clone, Debug)]
enum FieldPostings {
    /// (value, row), sorted.
    Int(Vec<(i64, u32)>),
    /// (value, row), sorted by value.
    Float(Vec<(f64, u32)>),
    /// Rows holding true, rows holding false.
    Bool(Vec<u32>, Vec<u32>),
    /// Rows per keyword or tag.
    Keys(HashMap<String, Vec<u32>>),
    /// Nothing (payload).
    None,
}

impl Postings {
    fn build(table: &AttrTable) -> Postings {
        let fields = table
            .columns()
            .iter()
            .map(|c| match c {
                Column::Int(v) => {
                    let mut p: Vec<(i64, u32)> =
                        v.iter().enumerate().filter_map(|(r, x)| x.map(|x| (x, r as u32))).collect();
                    p.sort_unstable();
                    FieldPostings::Int(p)
                }
                Column::Float(v) => {
                    let mut p: Vec<(f64, u32)> =
                        v.iter().enumerate().filter_map(|(r, x)| x.map(|x| (x, r as u32))).collect();
                    p.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    FieldPostings::Float(p)
                }
                Column::Bool(v) => {
                    let (mut t, mut f) = (Vec::new(), Vec::new());
                    for (r, x) in v.iter().enumerate() {
                        match x {
                            Some(true) => t.push(r as u32),
                            Some(false) => f.push(r as u32),
                            None => {}
                        }
                    }
                    FieldPostings::Bool(t, f)
                }
                Column::Keyword(v) => {
                    let mut m: HashMap<String, Vec<u32>> = HashMap::new();
                    for (r, x) in v.iter().enumerate() {
                        if let Some(x) = x {
                            m.entry(x.clone()).or_default().push(r as u32);
                        }
                    }
                    FieldPostings::Keys(m)
                }
                Column::Tags(v) => {
                    let mut m: HashMap<String, Vec<u32>> = HashMap::new();
                    for (r, x) in v.iter().enumerate() {
                        for t in x.iter().flatten() {
                            let rows = m.entry(t.clone()).or_default();
                            // A row listing a tag twice is one match.
                            if rows.last() != Some(&(r as u32)) {
                                rows.push(r as u32);
                            }
                        }
                    }
                    FieldPostings::Keys(m)
                }
                Column::Bytes(_) => FieldPostings::None,
            })
            .collect();
        Postings { fields }
    }
}

/// A set of rows of the table, one bit each.
struct Bits(Vec<u64>);

impl Bits {
    fn none(rows: usize) -> Bits {
        Bits(vec![0; rows.div_ceil(64)])
    }

    fn all(rows: usize) -> Bits {
        let mut b = Bits(vec![u64::MAX; rows.div_ceil(64)]);
        b.trim(rows);
        b
    }

    fn trim(&mut self, rows: usize) {
        if !rows.is_multiple_of(64)
            && let Some(last) = self.0.last_mut()
        {
            *last &= (1u64 << (rows % 64)) - 1;
        }
    }

    fn set(&mut self, r: u32) {
        self.0[r as usize / 64] |= 1 << (r % 64);
    }

    fn set_all(&mut self, rows: impl IntoIterator<Item = u32>) {
        rows.into_iter().for_each(|r| self.set(r));
    }
}

impl AttrTable {
    /// The ids of the rows that `filter` matches, ascending. The filter is checked against the schema
    /// first ([`Filter::check`]).
    pub fn evaluate(&self, filter: &Filter) -> Result<Vec<u64>> {
        filter.check(self.schema())?;
        let postings = self.postings.get_or_init(|| Postings::build(self));
        let bits = self.eval(filter, postings);
        let ids = self.ids();
        let mut out: Vec<u64> = Vec::new();
        for (w, &word) in bits.0.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let b = word.trailing_zeros() as usize;
                out.push(ids[w * 64 + b]);
                word &= word - 1;
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn eval(&self, filter: &Filter, p: &Postings) -> Bits {
        let rows = self.len();
        let mut out = Bits::none(rows);
        let index_of = |f: &str| self.schema().field(f);
        match filter {
            Filter::Eq { field, value } => {
                if let Some((k, ty)) = index_of(field)
                    && let Ok(v) = key(field, ty, value)
                {
                    select(&p.fields[k], &v, &mut out);
                }
            }
            Filter::In { field, values } => {
                if let Some((k, ty)) = index_of(field) {
                    for v in values.iter().filter_map(|v| key(field, ty, v).ok()) {
                        select(&p.fields[k], &v, &mut out);
                    }
                }
            }
            Filter::Range { field, gte, gt, lte, lt } => {
                if let Some((k, ty)) = index_of(field) {
                    let conv = |v: &Option<Scalar>| v.as_ref().and_then(|v| key(field, ty, v).ok());
                    range(&p.fields[k], [conv(gte), conv(gt), conv(lte), conv(lt)], &mut out);
                }
            }
            Filter::Tag { field, value } => {
                if let Some((k, _)) = index_of(field)
                    && let FieldPostings::Keys(m) = &p.fields[k]
                    && let Some(r) = m.get(value)
                {
                    out.set_all(r.iter().copied());
                }
            }
            Filter::IsNull { field } => {
                if let Some((k, _)) = index_of(field) {
                    out.set_all((0..rows).filter(|&r| self.is_null(k, r)).map(|r| r as u32));
                }
            }
            Filter::And(v) => {
                out = Bits::all(rows);
                for c in v {
                    let b = self.eval(c, p);
                    out.0.iter_mut().zip(&b.0).for_each(|(a, b)| *a &= b);
                }
            }
            Filter::Or(v) => {
                for c in v {
                    let b = self.eval(c, p);
                    out.0.iter_mut().zip(&b.0).for_each(|(a, b)| *a |= b);
                }
            }
            Filter::Not(c) => {
                out = self.eval(c, p);
                out.0.iter_mut().for_each(|w| *w = !*w);
                out.trim(rows);
            }
        }
        out
    }
}

/// Sets the rows whose value equals `v`.
fn select(p: &FieldPostings, v: &Key, out: &mut Bits) {
    match (p, v) {
        (FieldPostings::Int(s), Key::Int(x)) => {
            let lo = s.partition_point(|e| e.0 < *x);
            let hi = s.partition_point(|e| e.0 <= *x);
            out.set_all(s[lo..hi].iter().map(|e| e.1));
        }
        (FieldPostings::Float(s), Key::Float(x)) => {
            let lo = s.partition_point(|e| e.0 < *x);
            let hi = s.partition_point(|e| e.0 <= *x);
            out.set_all(s[lo..hi].iter().map(|e| e.1));
        }
        (FieldPostings::Bool(t, f), Key::Bool(b)) => out.set_all(if *b { t } else { f }.iter().copied()),
        (FieldPostings::Keys(m), Key::Str(s)) => {
            if let Some(r) = m.get(s) {
                out.set_all(r.iter().copied());
            }
        }
        _ => {}
    }
}

/// Sets the rows inside the bounds `[gte, gt, lte, lt]`.
fn range(p: &FieldPostings, bounds: [Option<Key>; 4], out: &mut Bits) {
    match p {
        FieldPostings::Int(s) => sorted_range(
            s,
            bounds.map(|k| match k {
                Some(Key::Int(i)) => Some(i),
                _ => None,
            }),
            out,
        ),
        FieldPostings::Float(s) => sorted_range(
            s,
            bounds.map(|k| match k {
                Some(Key::Float(x)) => Some(x),
                _ => None,
            }),
            out,
        ),
        _ => {}
    }
}

/// Sets the rows of `s` (sorted by value) whose value lies inside `[gte, gt, lte, lt]`.
fn sorted_range<T: PartialOrd + Copy>(s: &[(T, u32)], [gte, gt, lte, lt]: [Option<T>; 4], out: &mut Bits) {
    let mut lo = 0;
    if let Some(x) = gte {
        lo = lo.max(s.partition_point(|e| e.0 < x));
    }
    if let Some(x) = gt {
        lo = lo.max(s.partition_point(|e| e.0 <= x));
    }
    let mut hi = s.len();
    if let Some(x) = lte {
        hi = hi.min(s.partition_point(|e| e.0 <= x));
    }
    if let Some(x) = lt {
        hi = hi.min(s.partition_point(|e| e.0 < x));
    }
    if lo < hi {
        out.set_all(s[lo..hi].iter().map(|e| e.1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::{AttrBatch, Field, Value};

    /// 1000 rows: label = i % 7, score = i / 10 (float), tenant "t{i % 3}" (null every 5th), flag i even,
    /// tags {"a" if i % 2, "b" if i % 3 == 0}, ids 10 i.
    fn table() -> AttrTable {
        let s = Schema::new(vec![
            Field { name: "label".into(), ty: FieldType::Label },
            Field { name: "score".into(), ty: FieldType::Float },
            Field { name: "tenant".into(), ty: FieldType::Keyword },
            Field { name: "flag".into(), ty: FieldType::Bool },
            Field { name: "tags".into(), ty: FieldType::Tags },
            Field { name: "doc".into(), ty: FieldType::Payload },
        ])
        .unwrap();
        let n = 1000usize;
        let batch = AttrBatch::new(n)
            .with("label", Column::Int((0..n).map(|i| Some((i % 7) as i64)).collect()))
            .with("score", Column::Float((0..n).map(|i| Some(i as f64 / 10.0)).collect()))
            .with("tenant", Column::Keyword((0..n).map(|i| (i % 5 != 0).then(|| format!("t{}", i % 3))).collect()))
            .with("flag", Column::Bool((0..n).map(|i| Some(i % 2 == 0)).collect()))
            .with(
                "tags",
                Column::Tags(
                    (0..n)
                        .map(|i| {
                            let mut t = Vec::new();
                            if i % 2 == 1 {
                                t.push("a".to_string());
                            }
                            if i % 3 == 0 {
                                t.push("b".to_string());
                            }
                            Some(t)
                        })
                        .collect(),
                ),
            );
        let cols = batch.normalise(&s).unwrap();
        let mut t = AttrTable::new(s);
        let ids: Vec<u64> = (0..n as u64).map(|i| 10 * i).collect();
        t.append(&ids, Some(&cols));
        t
    }

    /// The reference: the same condition written directly over the row index.
    fn truth(pred: impl Fn(usize) -> bool) -> Vec<u64> {
        (0..1000usize).filter(|&i| pred(i)).map(|i| 10 * i as u64).collect()
    }

    fn json(s: &str) -> Filter {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn every_condition_matches_a_direct_scan() {
        let t = table();
        let cases: Vec<(Filter, Vec<u64>)> = vec![
            (json(r#"{"eq": {"field": "label", "value": 3}}"#), truth(|i| i % 7 == 3)),
            (json(r#"{"in": {"field": "label", "values": [0, 6]}}"#), truth(|i| i % 7 == 0 || i % 7 == 6)),
            (json(r#"{"range": {"field": "label", "gt": 1, "lte": 3}}"#), truth(|i| (2..=3).contains(&(i % 7)))),
            (json(r#"{"range": {"field": "score", "gte": 10, "lt": 20.5}}"#), truth(|i| (100..205).contains(&i))),
            (json(r#"{"eq": {"field": "tenant", "value": "t1"}}"#), truth(|i| i % 5 != 0 && i % 3 == 1)),
            (json(r#"{"is_null": {"field": "tenant"}}"#), truth(|i| i % 5 == 0)),
            (json(r#"{"eq": {"field": "flag", "value": false}}"#), truth(|i| i % 2 == 1)),
            (json(r#"{"tag": {"field": "tags", "value": "b"}}"#), truth(|i| i % 3 == 0)),
            (
                json(
                    r#"{"and": [{"tag": {"field": "tags", "value": "a"}}, {"not": {"eq": {"field": "label", "value": 0}}}]}"#,
                ),
                truth(|i| i % 2 == 1 && i % 7 != 0),
            ),
            (
                json(r#"{"or": [{"eq": {"field": "label", "value": 1}}, {"range": {"field": "score", "lt": 1}}]}"#),
                truth(|i| i % 7 == 1 || i < 10),
            ),
            (json(r#"{"is_null": {"field": "doc"}}"#), truth(|_| true)),
            (json(r#"{"and": []}"#), truth(|_| true)),
            (json(r#"{"or": []}"#), truth(|_| false)),
        ];
        for (f, want) in cases {
            assert_eq!(t.evaluate(&f).unwrap(), want, "{f:?}");
        }
    }

    #[test]
    fn evaluation_follows_removals_and_updates() {
        let mut t = table();
        let f = json(r#"{"eq": {"field": "label", "value": 3}}"#);
        let before = t.evaluate(&f).unwrap();
        t.remove(&[30]);
        t.update(&[40], &AttrBatch::new(1).with("label", Column::Int(vec![Some(3)]))).unwrap();
        let after = t.evaluate(&f).unwrap();
        assert!(!after.contains(&30) && after.contains(&40));
        assert_eq!(after.len(), before.len());
        assert_eq!(t.row(40).unwrap()[0], ("label".to_string(), Some(Value::Int(3))));
    }

    #[test]
    fn invalid_filters_are_typed_errors_naming_the_field() {
        let t = table();
        for (s, field) in [
            (r#"{"eq": {"field": "colour", "value": 1}}"#, "colour"),
            (r#"{"eq": {"field": "label", "value": "x"}}"#, "label"),
            (r#"{"eq": {"field": "label", "value": 1.5}}"#, "label"),
            (r#"{"range": {"field": "tenant", "gte": 1}}"#, "tenant"),
            (r#"{"tag": {"field": "label", "value": "a"}}"#, "label"),
            (r#"{"eq": {"field": "doc", "value": "a"}}"#, "doc"),
            (r#"{"eq": {"field": "tags", "value": "a"}}"#, "tags"),
        ] {
            match t.evaluate(&json(s)) {
                Err(Error::InvalidFilter { field: f, .. }) => assert_eq!(f, field, "{s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        assert!(serde_json::from_str::<Filter>(r#"{"eq": {"field": "label", "value": 1, "x": 2}}"#).is_err());
        let mut deep = Filter::IsNull { field: "label".into() };
        for _ in 0..=MAX_DEPTH {
            deep = Filter::Not(Box::new(deep));
        }
        assert!(t.evaluate(&deep).is_err());
    }

    /// A filter nested thousands deep in JSON is a parse error (serde_json's recursion limit, 128),
    /// never a stack overflow; one between that limit and [`MAX_DEPTH`] parses and is a typed
    /// `InvalidFilter`. Mutation caught: a check without the depth bound (the 100-deep filter answered),
    /// or a JSON reader built with `unbounded_depth` (the 100,000-deep one overflows the stack).
    #[test]
    fn filters_nested_thousands_deep_are_refused_without_recursion() {
        let t = table();
        let nest = |n: usize| {
            let mut s = String::new();
            s.push_str(&r#"{"not": "#.repeat(n));
            s.push_str(r#"{"is_null": {"field": "label"}}"#);
            s.push_str(&"}".repeat(n));
            s
        };
        assert!(serde_json::from_str::<Filter>(&nest(100_000)).is_err(), "refused by the parser");
        let deep: Filter = serde_json::from_str(&nest(100)).unwrap();
        assert!(matches!(t.evaluate(&deep), Err(Error::InvalidFilter { .. })));
        // At the bound it is answered: an even number of `not`s is the condition itself.
        let ok: Filter = serde_json::from_str(&nest(MAX_DEPTH)).unwrap();
        assert_eq!(t.evaluate(&ok).unwrap(), Vec::<u64>::new());
    }

    /// Non-finite bounds and values are typed errors naming the field (a NaN would make the binary
    /// searches meaningless); JSON cannot carry them at all. Mutation caught: `key` without the
    /// `is_finite` test (a NaN range answered with some rows).
    #[test]
    fn nan_and_infinite_constants_are_refused() {
        let t = table();
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for f in [
                Filter::range("score", Some(Scalar::Float(x)), None),
                Filter::range("score", None, Some(Scalar::Float(x))),
                Filter::eq("score", Scalar::Float(x)),
                Filter::In { field: "score".into(), values: vec![Scalar::Float(1.0), Scalar::Float(x)] },
            ] {
                match t.evaluate(&f) {
                    Err(Error::InvalidFilter { field, .. }) => assert_eq!(field, "score"),
                    other => panic!("{f:?}: {other:?}"),
                }
            }
        }
        assert!(serde_json::from_str::<Filter>(r#"{"range": {"field": "score", "gte": NaN}}"#).is_err());
        assert!(serde_json::from_str::<Filter>(r#"{"range": {"field": "score", "gte": 1e999}}"#).is_err());
        // A float constant on an integer field is a wrong type, not rounded.
        let f = Filter::range("label", Some(Scalar::Float(1.5)), None);
        assert!(matches!(t.evaluate(&f), Err(Error::InvalidFilter { .. })));
    }

    /// `in` lists of 200,000 values (most matching nothing, some repeated) give the direct scan's rows.
    /// Mutation caught: a value matched twice setting a row twice in the ids (duplicates), or values past
    /// the first few ignored.
    #[test]
    fn huge_in_lists_match_a_direct_scan() {
        let t = table();
        let mut ints: Vec<Scalar> = (1_000..200_000).map(Scalar::Int).collect();
        ints.extend([Scalar::Int(5), Scalar::Int(2), Scalar::Int(5)]);
        let f = Filter::In { field: "label".into(), values: ints };
        assert_eq!(t.evaluate(&f).unwrap(), truth(|i| matches!(i % 7, 2 | 5)));
        let mut keys: Vec<Scalar> = (0..200_000).map(|i| Scalar::Str(format!("x{i}"))).collect();
        keys.push(Scalar::Str("t2".into()));
        let f = Filter::In { field: "tenant".into(), values: keys };
        assert_eq!(t.evaluate(&f).unwrap(), truth(|i| i % 5 != 0 && i % 3 == 2));
    }
}
