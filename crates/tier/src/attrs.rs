//! Attributes of splats: a [`Schema`] per database, columns of typed values ([`AttrBatch`], [`Column`]),
//! their validation at ingest, their encoding inside log records and segments, and the in-RAM
//! [`AttrTable`] of every live row that filters ([`crate::Filter`]) are evaluated over.
//!
//! This module does no IO: the log and the segments carry the encoded block ([`encode_block`],
//! [`decode_block`]), the manifest carries the schema.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::idruns::IdRuns;
use crate::{Error, Result};

/// The type of one attribute field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// The class label (an integer; at most one per schema; the data lake's label column).
    Label,
    /// A 64-bit signed integer.
    Int,
    /// A 64-bit float (finite).
    Float,
    /// A boolean.
    Bool,
    /// A keyword string (matched whole, never tokenised).
    Keyword,
    /// A point in time: microseconds since the Unix epoch, as an integer.
    Timestamp,
    /// A list of keywords (tags).
    Tags,
    /// Opaque bytes returned with hits (JSON is carried as its UTF-8 text); not filterable except by
    /// `is_null`.
    Payload,
}

impl FieldType {
    /// The kind of column that holds values of this type.
    pub fn storage(self) -> Storage {
        match self {
            FieldType::Label | FieldType::Int | FieldType::Timestamp => Storage::Int,
            FieldType::Float => Storage::Float,
            FieldType::Bool => Storage::Bool,
            FieldType::Keyword => Storage::Keyword,
            FieldType::Tags => Storage::Tags,
            FieldType::Payload => Storage::Bytes,
        }
    }
}

/// The kinds of column ([`Column`]'s variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// `Column::Int`.
    Int,
    /// `Column::Float`.
    Float,
    /// `Column::Bool`.
    Bool,
    /// `Column::Keyword`.
    Keyword,
    /// `Column::Tags`.
    Tags,
    /// `Column::Bytes`.
    Bytes,
}

/// One named, typed field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Its name: 1 to 64 bytes of ASCII letters, digits, `_`, `-` or `.`.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: FieldType,
}

/// The attribute fields of a database: declared at create, or inferred from the first ingest that
/// carries attributes. Fixed afterwards: a column of another name is an unknown field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The fields, in column order.
    pub fields: Vec<Field>,
}

/// Most fields a schema may have.
pub const MAX_FIELDS: usize = 256;

fn attr_error(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidAttributes { field: field.to_string(), reason: reason.into() }
}

impl Schema {
    /// A schema of these fields, checked ([`Schema::check`]).
    pub fn new(fields: Vec<Field>) -> Result<Schema> {
        let s = Schema { fields };
        s.check()?;
        Ok(s)
    }

    /// Checks names (valid, distinct), the number of fields and that at most one is a label.
    pub fn check(&self) -> Result<()> {
        if self.fields.len() > MAX_FIELDS {
            return Err(attr_error("", format!("{} fields, at most {MAX_FIELDS}", self.fields.len())));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.fields {
            let ok = (1..=64).contains(&f.name.len())
                && f.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(attr_error(&f.name, "a field name is 1 to 64 ASCII letters, digits, '_', '-' or '.'"));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(attr_error(&f.name, "declared twice"));
            }
        }
        if self.fields.iter().filter(|f| f.ty == FieldType::Label).count() > 1 {
            return Err(attr_error("", "more than one label field"));
        }
        Ok(())
    }

    /// The position and type of field `name`.
    pub fn field(&self, name: &str) -> Option<(usize, FieldType)> {
        self.fields.iter().position(|f| f.name == name).map(|i| (i, self.fields[i].ty))
    }

    /// The label field's position, if the schema has one.
    pub fn label(&self) -> Option<usize> {
        self.fields.iter().position(|f| f.ty == FieldType::Label)
    }

    /// Whether the schema has no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The schema a first batch implies: each column's kind gives the type (integers named `label`
    /// become the label; timestamps must be declared, they infer as integers).
    pub fn infer(batch: &AttrBatch) -> Result<Schema> {
        let fields = batch
            .columns
            .iter()
            .map(|(name, col)| Field {
                name: name.clone(),
                ty: match col {
                    Column::Int(_) if name == "label" => FieldType::Label,
                    Column::Int(_) => FieldType::Int,
                    Column::Float(_) => FieldType::Float,
                    Column::Bool(_) => FieldType::Bool,
                    Column::Keyword(_) => FieldType::Keyword,
                    Column::Tags(_) => FieldType::Tags,
                    Column::Bytes(_) => FieldType::Payload,
                },
            })
            .collect();
        Schema::new(fields)
    }
}

/// One column of values, `None` where a row has none (null).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Column {
    /// Integers (label, int and timestamp fields).
    Int(Vec<Option<i64>>),
    /// Floats.
    Float(Vec<Option<f64>>),
    /// Booleans.
    Bool(Vec<Option<bool>>),
    /// Keywords.
    Keyword(Vec<Option<String>>),
    /// Lists of keywords.
    Tags(Vec<Option<Vec<String>>>),
    /// Opaque bytes.
    Bytes(Vec<Option<Vec<u8>>>),
}

/// Applies `$body` to the vector inside any column variant.
macro_rules! each {
    ($col:expr, $v:ident => $body:expr) => {
        match $col {
            Column::Int($v) => $body,
            Column::Float($v) => $body,
            Column::Bool($v) => $body,
            Column::Keyword($v) => $body,
            Column::Tags($v) => $body,
            Column::Bytes($v) => $body,
        }
    };
}

/// Builds a column of the same variant as `$col` from `$v => expr` over its vector.
macro_rules! map_same {
    ($col:expr, $v:ident => $body:expr) => {
        match $col {
            Column::Int($v) => Column::Int($body),
            Column::Float($v) => Column::Float($body),
            Column::Bool($v) => Column::Bool($body),
            Column::Keyword($v) => Column::Keyword($body),
            Column::Tags($v) => Column::Tags($body),
            Column::Bytes($v) => Column::Bytes($body),
        }
    };
}

impl Column {
    /// Number of rows.
    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    /// Whether the column has no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its kind.
    pub fn storage(&self) -> Storage {
        match self {
            Column::Int(_) => Storage::Int,
            Column::Float(_) => Storage::Float,
            Column::Bool(_) => Storage::Bool,
            Column::Keyword(_) => Storage::Keyword,
            Column::Tags(_) => Storage::Tags,
            Column::Bytes(_) => Storage::Bytes,
        }
    }

    /// A column of `rows` nulls of this kind.
    pub fn nulls(storage: Storage, rows: usize) -> Column {
        match storage {
            Storage::Int => Column::Int(vec![None; rows]),
            Storage::Float => Column::Float(vec![None; rows]),
            Storage::Bool => Column::Bool(vec![None; rows]),
            Storage::Keyword => Column::Keyword(vec![None; rows]),
            Storage::Tags => Column::Tags(vec![None; rows]),
            Storage::Bytes => Column::Bytes(vec![None; rows]),
        }
    }

    /// The value of row `r` (`None`: null, or past the end).
    pub fn get(&self, r: usize) -> Option<Value> {
        match self {
            Column::Int(v) => v.get(r).copied().flatten().map(Value::Int),
            Column::Float(v) => v.get(r).copied().flatten().map(Value::Float),
            Column::Bool(v) => v.get(r).copied().flatten().map(Value::Bool),
            Column::Keyword(v) => v.get(r).cloned().flatten().map(Value::Keyword),
            Column::Tags(v) => v.get(r).cloned().flatten().map(Value::Tags),
            Column::Bytes(v) => v.get(r).cloned().flatten().map(Value::Bytes),
        }
    }

    fn is_null(&self, r: usize) -> bool {
        each!(self, v => v[r].is_none())
    }

    /// Rows `rows` of this column, in that order.
    fn pick(&self, rows: &[usize]) -> Column {
        // `Clone::clone` spelled out: the macro's arms hold both copy and heap types.
        map_same!(self, v => rows.iter().map(|&r| Clone::clone(&v[r])).collect())
    }

    /// Appends `other` by moving its values (of the same kind; checked by the callers): no value is
    /// copied, no keyword allocated again.
    fn append(&mut self, other: Column) {
        match (self, other) {
            (Column::Int(a), Column::Int(mut b)) => a.append(&mut b),
            (Column::Float(a), Column::Float(mut b)) => a.append(&mut b),
            (Column::Bool(a), Column::Bool(mut b)) => a.append(&mut b),
            (Column::Keyword(a), Column::Keyword(mut b)) => a.append(&mut b),
            (Column::Tags(a), Column::Tags(mut b)) => a.append(&mut b),
            (Column::Bytes(a), Column::Bytes(mut b)) => a.append(&mut b),
            _ => {}
        }
    }

    /// Appends `other` (of the same kind; checked by the callers).
    fn extend(&mut self, other: &Column) {
        match (self, other) {
            (Column::Int(a), Column::Int(b)) => a.extend_from_slice(b),
            (Column::Float(a), Column::Float(b)) => a.extend_from_slice(b),
            (Column::Bool(a), Column::Bool(b)) => a.extend_from_slice(b),
            (Column::Keyword(a), Column::Keyword(b)) => a.extend_from_slice(b),
            (Column::Tags(a), Column::Tags(b)) => a.extend_from_slice(b),
            (Column::Bytes(a), Column::Bytes(b)) => a.extend_from_slice(b),
            _ => {}
        }
    }

    /// Sets row `to` of this column to row `from` of `other` (of the same kind).
    fn set_from(&mut self, to: usize, other: &Column, from: usize) {
        match (self, other) {
            (Column::Int(a), Column::Int(b)) => a[to] = b[from],
            (Column::Float(a), Column::Float(b)) => a[to] = b[from],
            (Column::Bool(a), Column::Bool(b)) => a[to] = b[from],
            (Column::Keyword(a), Column::Keyword(b)) => a[to].clone_from(&b[from]),
            (Column::Tags(a), Column::Tags(b)) => a[to].clone_from(&b[from]),
            (Column::Bytes(a), Column::Bytes(b)) => a[to].clone_from(&b[from]),
            _ => {}
        }
    }

    fn swap_remove(&mut self, r: usize) {
        each!(self, v => drop(v.swap_remove(r)))
    }

    /// The first row whose value no stored column may hold, with why: a float that is not finite, an
    /// empty keyword or tag, a keyword, tag or payload over its size bound.
    fn invalid_row(&self) -> Option<(usize, &'static str)> {
        let key_ok = |s: &str| !s.is_empty() && s.len() <= MAX_KEYWORD;
        match self {
            Column::Float(v) => v.iter().position(|x| x.is_some_and(|x| !x.is_finite())).map(|r| (r, "not finite")),
            Column::Keyword(v) => v
                .iter()
                .position(|s| s.as_deref().is_some_and(|s| !key_ok(s)))
                .map(|r| (r, "a keyword is 1 to 1024 bytes")),
            Column::Tags(v) => v
                .iter()
                .position(|t| t.as_ref().is_some_and(|t| t.len() > MAX_TAGS || !t.iter().all(|s| key_ok(s))))
                .map(|r| (r, "tags are at most 1024 keywords of 1 to 1024 bytes")),
            Column::Bytes(v) => v
                .iter()
                .position(|b| b.as_ref().is_some_and(|b| b.len() > MAX_PAYLOAD))
                .map(|r| (r, "a payload is at most 16 MiB")),
            Column::Int(_) | Column::Bool(_) => None,
        }
    }
}

/// Longest keyword or tag, in bytes.
pub const MAX_KEYWORD: usize = 1024;
/// Most tags of one row.
pub const MAX_TAGS: usize = 1024;
/// Largest payload of one row, in bytes.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// One attribute value of one row (what hits carry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// An integer (label, int, timestamp).
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A keyword.
    Keyword(String),
    /// Tags.
    Tags(Vec<String>),
    /// A payload.
    Bytes(Vec<u8>),
}

/// Named columns of attributes for a batch of `rows` rows, as a user hands them in. Fields of the schema
/// that it does not name are null; a name outside the schema is refused.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttrBatch {
    /// Rows of the batch (every column has this many values).
    pub rows: usize,
    /// The columns, by field name.
    pub columns: Vec<(String, Column)>,
}

impl AttrBatch {
    /// An empty batch of `rows` rows (every field null).
    pub fn new(rows: usize) -> AttrBatch {
        AttrBatch { rows, columns: Vec::new() }
    }

    /// Adds a column (builder style).
    pub fn with(mut self, name: impl Into<String>, column: Column) -> AttrBatch {
        self.columns.push((name.into(), column));
        self
    }

    /// Checks the batch against `schema` and returns its columns in schema order (a missing field: all
    /// null). Errors ([`Error::InvalidAttributes`], naming the field): an unknown field, a column of the
    /// wrong type, a column whose length is not `rows`, a field named twice, a value no column may hold.
    pub fn normalise(&self, schema: &Schema) -> Result<Vec<Column>> {
        let mut out: Vec<Option<Column>> = vec![None; schema.fields.len()];
        for (name, col) in &self.columns {
            let Some((i, ty)) = schema.field(name) else {
                let known: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
                return Err(attr_error(name, format!("unknown field (the schema has {known:?})")));
            };
            if col.storage() != ty.storage() {
                return Err(attr_error(name, format!("a {:?} column for a field of type {ty:?}", col.storage())));
            }
            if col.len() != self.rows {
                return Err(attr_error(name, format!("{} values for {} rows", col.len(), self.rows)));
            }
            if let Some((row, why)) = col.invalid_row() {
                return Err(attr_error(name, format!("row {row}: {why}")));
            }
            if out[i].replace(col.clone()).is_some() {
                return Err(attr_error(name, "given twice"));
            }
        }
        Ok(out
            .into_iter()
            .zip(&schema.fields)
            .map(|(c, f)| c.unwrap_or_else(|| Column::nulls(f.ty.storage(), self.rows)))
            .collect())
    }
}

/// The encoded block of a log record or segment: the field names (a check against the manifest's
/// schema), then the columns in schema order, postcard.
#[derive(Serialize, Deserialize)]
struct Block {
    names: Vec<String>,
    columns: Vec<Column>,
}

/// Encodes columns in schema order (from [`AttrBatch::normalise`] or [`AttrTable::extract`]).
pub(crate) fn encode_block(schema: &Schema, columns: &[Column]) -> Result<Vec<u8>> {
    let block = Block { names: schema.fields.iter().map(|f| f.name.clone()).collect(), columns: columns.to_vec() };
    postcard::to_allocvec(&block)
        .map_err(|e| Error::InvalidBatch { reason: format!("attributes do not serialise: {e}") })
}

/// Decodes a block of `rows` rows and checks it against `schema` (names, kinds, lengths, values); the
/// reason says what is wrong, for the caller's `Corrupt` error.
pub(crate) fn decode_block(bytes: &[u8], schema: &Schema, rows: usize) -> std::result::Result<Vec<Column>, String> {
    let (block, rest): (Block, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("attribute block does not decode: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the attribute block", rest.len()));
    }
    let names: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
    if block.names.iter().map(String::as_str).ne(names.iter().copied()) || block.columns.len() != names.len() {
        return Err(format!("attribute block has fields {:?}, the schema {names:?}", block.names));
    }
    for (col, f) in block.columns.iter().zip(&schema.fields) {
        if col.storage() != f.ty.storage() || col.len() != rows {
            return Err(format!("attribute column {} is not {rows} values of type {:?}", f.name, f.ty));
        }
        if let Some((row, why)) = col.invalid_row() {
            return Err(format!("attribute column {} row {row}: {why}", f.name));
        }
    }
    Ok(block.columns)
}

/// Encodes an update (the fields `batch` names, in its order; checked by the caller).
pub(crate) fn encode_update(batch: &AttrBatch) -> Result<Vec<u8>> {
    let block = Block {
        names: batch.columns.iter().map(|(n, _)| n.clone()).collect(),
        columns: batch.columns.iter().map(|(_, c)| c.clone()).collect(),
    };
    postcard::to_allocvec(&block)
        .map_err(|e| Error::InvalidBatch { reason: format!("attributes do not serialise: {e}") })
}

/// Decodes an update of `rows` rows and checks it against `schema`; the reason says what is wrong.
pub(crate) fn decode_update(bytes: &[u8], schema: &Schema, rows: usize) -> std::result::Result<AttrBatch, String> {
    let (block, rest): (Block, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("attribute update does not decode: {e}"))?;
    if !rest.is_empty() || block.names.len() != block.columns.len() {
        return Err("attribute update has bytes left over or names without columns".into());
    }
    let batch = AttrBatch { rows, columns: block.names.into_iter().zip(block.columns).collect() };
    batch.normalise(schema).map_err(|e| e.to_string())?;
    Ok(batch)
}

/// The attributes of every live row, in RAM: the columns in schema order, and where each id's row is.
/// Filters are evaluated over it ([`AttrTable::evaluate`]) through per-field indexes built on first use
/// after a change.
///
/// A table without a schema (no field: every row's attributes are the empty list) keeps only which ids
/// have a row, as runs of consecutive ids: nothing per row for ids handed out in sequence, where a
/// list of the ids and a map to their rows took about 32 bytes a row. Its rows are laid out (in id
/// order) when a schema is declared.
#[derive(Clone, Debug, Default)]
pub struct AttrTable {
    schema: Schema,
    rows: Rows,
    columns: Vec<Column>,
    /// The per-field indexes; emptied by every change, rebuilt by the next filter.
    pub(crate) postings: OnceLock<crate::filter::Postings>,
    /// Which state of the rows this is ([`stamp`](AttrTable::stamp)).
    stamp: u64,
}

/// A stamp no table has had before in this process; 0 is the empty default table's.
fn next_stamp() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Which ids have a row, and where.
#[derive(Clone, Debug)]
enum Rows {
    /// Without a field: the ids only (unless they are scattered: see [`IdRuns::scattered`]).
    Ids(IdRuns),
    /// Each row's id, and the row of each id.
    Laid { ids: Vec<u64>, pos: HashMap<u64, usize> },
}

impl Default for Rows {
    fn default() -> Rows {
        Rows::Ids(IdRuns::default())
    }
}

impl Rows {
    fn laid(ids: Vec<u64>) -> Rows {
        let pos = ids.iter().enumerate().map(|(r, &id)| (id, r)).collect();
        Rows::Laid { ids, pos }
    }

    /// The row of `id` (in the id order of a table without fields).
    fn get(&self, id: u64) -> Option<usize> {
        match self {
            Rows::Ids(runs) => runs.contains(id).then_some(0),
            Rows::Laid { pos, .. } => pos.get(&id).copied(),
        }
    }
}

/// Attributes checked for an add and not yet stored ([`AttrTable::prepare`], [`AttrTable::commit`]):
/// the columns in schema order (`None`: every field null), and the schema inferred from them when the
/// table had none.
#[derive(Debug)]
pub struct PreparedAttrs {
    rows: usize,
    schema: Option<Schema>,
    columns: Option<Vec<Column>>,
}

impl AttrTable {
    /// An empty table of `schema`.
    pub fn new(schema: Schema) -> AttrTable {
        let columns: Vec<Column> = schema.fields.iter().map(|f| Column::nulls(f.ty.storage(), 0)).collect();
        let rows = if columns.is_empty() { Rows::default() } else { Rows::laid(Vec::new()) };
        AttrTable { schema, rows, columns, postings: OnceLock::new(), stamp: next_stamp() }
    }

    /// Lays the rows out (each id's row, in id order) before a change that needs rows: a schema, or
    /// ids too scattered for runs.
    fn lay_out(&mut self) {
        if let Rows::Ids(runs) = &self.rows {
            self.rows = Rows::laid(runs.iter().collect());
        }
    }

    /// Bytes on the heap of the ids and their rows (the columns not counted), for a memory breakdown.
    pub fn row_heap_bytes(&self) -> usize {
        match &self.rows {
            Rows::Ids(runs) => runs.heap_bytes(),
            Rows::Laid { ids, pos } => ids.capacity() * 8 + pos.capacity() * (1 + 16),
        }
    }

    /// Marks a change of rows or values: the per-field indexes are stale, and the stamp is new.
    fn changed(&mut self) {
        self.postings = OnceLock::new();
        self.stamp = next_stamp();
    }

    /// Which state of the rows and their values this is: new after every change (rows added, removed or
    /// updated, a schema set), kept by a clone. Two tables with one stamp give every filter the same
    /// matching ids, so a caller may keep what it derived from a filter's result (the facade's resolved
    /// filters) for as long as the stamp stays.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Rows (live ids) in the table.
    pub fn len(&self) -> usize {
        match &self.rows {
            Rows::Ids(runs) => runs.len(),
            Rows::Laid { ids, .. } => ids.len(),
        }
    }

    /// Whether the table has no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` has a row.
    pub fn contains(&self, id: u64) -> bool {
        self.rows.get(id).is_some()
    }

    /// Each row's id, in row order.
    pub(crate) fn ids(&self) -> Cow<'_, [u64]> {
        match &self.rows {
            Rows::Ids(runs) => Cow::Owned(runs.iter().collect()),
            Rows::Laid { ids, .. } => Cow::Borrowed(ids),
        }
    }

    pub(crate) fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Sets a schema on an empty table (one that had none).
    pub(crate) fn set_schema(&mut self, schema: Schema) {
        self.lay_out();
        let rows = self.len();
        self.columns = schema.fields.iter().map(|f| Column::nulls(f.ty.storage(), rows)).collect();
        self.schema = schema;
        self.changed();
    }

    /// Appends rows `ids` with `columns` in schema order (`None`: every field null). The ids must be new
    /// (the callers check).
    pub(crate) fn append(&mut self, ids: &[u64], columns: Option<&[Column]>) {
        if let Rows::Ids(runs) = &mut self.rows
            && columns.is_none()
            && self.columns.is_empty()
        {
            runs.insert(ids);
            if runs.scattered() {
                self.lay_out();
            }
            self.changed();
            return;
        }
        self.push_rows(ids);
        for (k, col) in self.columns.iter_mut().enumerate() {
            match columns {
                Some(c) => col.extend(&c[k]),
                None => col.extend(&Column::nulls(col.storage(), ids.len())),
            }
        }
        self.changed();
    }

    /// [`append`](Self::append) moving the values of `columns` (the ingest path: the columns were just
    /// made by [`AttrBatch::normalise`]; copying them again would allocate every keyword a second time).
    pub(crate) fn append_owned(&mut self, ids: &[u64], columns: Option<Vec<Column>>) {
        let Some(columns) = columns else { return self.append(ids, None) };
        self.push_rows(ids);
        for (col, c) in self.columns.iter_mut().zip(columns) {
            col.append(c);
        }
        self.changed();
    }

    /// Appends rows for `ids` (laid out; the columns are the caller's).
    fn push_rows(&mut self, ids: &[u64]) {
        self.lay_out();
        if let Rows::Laid { ids: all, pos } = &mut self.rows {
            let start = all.len();
            all.extend_from_slice(ids);
            pos.reserve(ids.len());
            for (i, &id) in ids.iter().enumerate() {
                pos.insert(id, start + i);
            }
        }
    }

    /// Removes the rows of `ids` (absent ones are ignored).
    pub(crate) fn remove(&mut self, ids: &[u64]) {
        match &mut self.rows {
            Rows::Ids(runs) => runs.remove(ids),
            Rows::Laid { ids: all, pos } => {
                for id in ids {
                    let Some(r) = pos.remove(id) else { continue };
                    all.swap_remove(r);
                    self.columns.iter_mut().for_each(|c| c.swap_remove(r));
                    if let Some(&moved) = all.get(r) {
                        pos.insert(moved, r);
                    }
                }
            }
        }
        self.changed();
    }

    /// Sets, for each of `ids` (all present: the callers check), the fields `batch` names to its values;
    /// other fields keep theirs. `batch` is checked against the schema first: nothing changes on error.
    pub(crate) fn update(&mut self, ids: &[u64], batch: &AttrBatch) -> Result<()> {
        self.check_update(ids, batch)?;
        for (name, col) in &batch.columns {
            let (k, _) = self.schema.field(name).ok_or_else(|| attr_error(name, "unknown field"))?;
            for (j, &id) in ids.iter().enumerate() {
                if let Some(r) = self.rows.get(id) {
                    self.columns[k].set_from(r, col, j);
                }
            }
        }
        self.changed();
        Ok(())
    }

    /// What [`update`](Self::update) checks: the batch against the schema, one row per id, each id here.
    pub(crate) fn check_update(&self, ids: &[u64], batch: &AttrBatch) -> Result<()> {
        if batch.rows != ids.len() {
            return Err(attr_error("", format!("{} rows of attributes for {} ids", batch.rows, ids.len())));
        }
        batch.normalise(&self.schema)?;
        if let Some(id) = ids.iter().find(|&&id| !self.contains(id)) {
            return Err(Error::InvalidBatch { reason: format!("id {id} is not in the database") });
        }
        Ok(())
    }

    /// Adds rows `ids` with `attrs` (`None`: every field null) to a table kept outside a database (the
    /// facade's in-memory engine), with the checks [`crate::Db::ingest_with`] makes: a first batch with
    /// attributes sets the schema of a table that has none; the batch must fit it, one row per id, every
    /// id new. Nothing changes on error.
    pub fn add(&mut self, ids: &[u64], attrs: Option<&AttrBatch>) -> Result<()> {
        if let Some(id) = ids.iter().find(|&&id| self.contains(id)) {
            return Err(Error::InvalidBatch { reason: format!("id {id} is already in the table") });
        }
        let prepared = self.prepare(ids.len(), attrs)?;
        self.commit(ids, prepared);
        Ok(())
    }

    /// [`add`](Self::add) where an id that has a row already is replaced by its new one (the upsert of
    /// an engine kept outside a database): checked as `add` checks, and nothing changes on error.
    pub fn replace(&mut self, ids: &[u64], attrs: Option<&AttrBatch>) -> Result<()> {
        let prepared = self.prepare(ids.len(), attrs)?;
        self.remove(ids);
        self.commit(ids, prepared);
        Ok(())
    }

    /// The first half of [`add`](Self::add) without its id check: `attrs` checked for `rows` new rows
    /// (against the schema, or inferring one when the table has none), the table unchanged. A caller
    /// that must check more before anything changes (the in-memory engine's vectors) checks it between
    /// this and [`commit`](Self::commit).
    pub fn prepare(&self, rows: usize, attrs: Option<&AttrBatch>) -> Result<PreparedAttrs> {
        let Some(a) = attrs.filter(|a| !a.columns.is_empty() || a.rows != rows) else {
            return Ok(PreparedAttrs { rows, schema: None, columns: None });
        };
        if a.rows != rows {
            return Err(attr_error("", format!("{} rows of attributes for {rows} ids", a.rows)));
        }
        let inferred = if self.schema.is_empty() { Some(Schema::infer(a)?) } else { None };
        let columns = a.normalise(inferred.as_ref().unwrap_or(&self.schema))?;
        Ok(PreparedAttrs { rows, schema: inferred, columns: Some(columns) })
    }

    /// Appends rows `ids` with attributes from [`prepare`](Self::prepare) on this table, unchanged since
    /// (the ids new, one per prepared row: the caller checked them). Cannot fail.
    pub fn commit(&mut self, ids: &[u64], prepared: PreparedAttrs) {
        debug_assert_eq!(ids.len(), prepared.rows, "prepared for another batch");
        if let Some(schema) = prepared.schema {
            self.set_schema(schema);
        }
        self.append_owned(ids, prepared.columns);
    }

    /// Declares the schema of a table that has none (its rows get nulls); the same one again is a no-op,
    /// another one an error.
    pub fn declare(&mut self, schema: Schema) -> Result<()> {
        schema.check()?;
        if self.schema == schema {
            return Ok(());
        }
        if !self.schema.is_empty() {
            return Err(attr_error("", format!("the schema is fixed ({:?})", self.schema)));
        }
        self.set_schema(schema);
        Ok(())
    }

    /// Removes the rows of `ids` (absent ones are ignored).
    pub fn delete(&mut self, ids: &[u64]) {
        self.remove(ids);
    }

    /// Sets the fields `attrs` names for each of `ids` (see [`crate::Db::set_attributes`]).
    pub fn set(&mut self, ids: &[u64], attrs: &AttrBatch) -> Result<()> {
        if self.schema.is_empty() {
            return Err(attr_error("", "no attribute schema"));
        }
        self.update(ids, attrs)
    }

    /// The columns, in schema order, of the rows of `ids` (ids without a row get nulls).
    pub fn extract(&self, ids: &[u64]) -> Vec<Column> {
        if self.columns.is_empty() {
            return Vec::new();
        }
        let rows: Vec<Option<usize>> = ids.iter().map(|&id| self.rows.get(id)).collect();
        if rows.iter().all(Option::is_some) {
            let rows: Vec<usize> = rows.into_iter().flatten().collect();
            return self.columns.iter().map(|c| c.pick(&rows)).collect();
        }
        self.columns
            .iter()
            .map(|c| {
                let mut out = Column::nulls(c.storage(), 0);
                for r in &rows {
                    match r {
                        Some(r) => out.extend(&c.pick(&[*r])),
                        None => out.extend(&Column::nulls(c.storage(), 1)),
                    }
                }
                out
            })
            .collect()
    }

    /// The attributes of `id`: each field's name and value (`None`: null), in schema order; `None` when
    /// the id has no row.
    pub fn row(&self, id: u64) -> Option<Vec<(String, Option<Value>)>> {
        let r = self.rows.get(id)?;
        Some(self.schema.fields.iter().zip(&self.columns).map(|(f, c)| (f.name.clone(), c.get(r))).collect())
    }

    /// The label of `id`, when the schema has a label field and the row a value.
    pub fn label(&self, id: u64) -> Option<i64> {
        let k = self.schema.label()?;
        let r = self.rows.get(id)?;
        match &self.columns[k] {
            Column::Int(v) => v[r],
            _ => None,
        }
    }

    pub(crate) fn is_null(&self, k: usize, r: usize) -> bool {
        self.columns[k].is_null(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![
            Field { name: "label".into(), ty: FieldType::Label },
            Field { name: "tenant".into(), ty: FieldType::Keyword },
            Field { name: "score".into(), ty: FieldType::Float },
        ])
        .unwrap()
    }

    #[test]
    fn normalise_refuses_unknown_fields_wrong_types_and_lengths() {
        let s = schema();
        let unknown = AttrBatch::new(1).with("colour", Column::Int(vec![Some(1)]));
        assert!(matches!(unknown.normalise(&s), Err(Error::InvalidAttributes { field, .. }) if field == "colour"));
        let wrong = AttrBatch::new(1).with("tenant", Column::Int(vec![Some(1)]));
        assert!(matches!(wrong.normalise(&s), Err(Error::InvalidAttributes { field, .. }) if field == "tenant"));
        let short = AttrBatch::new(2).with("label", Column::Int(vec![Some(1)]));
        assert!(matches!(short.normalise(&s), Err(Error::InvalidAttributes { field, .. }) if field == "label"));
        let nan = AttrBatch::new(1).with("score", Column::Float(vec![Some(f64::NAN)]));
        assert!(nan.normalise(&s).is_err());
        // A missing field is null, in schema order.
        let ok = AttrBatch::new(2).with("score", Column::Float(vec![Some(0.5), None]));
        let cols = ok.normalise(&s).unwrap();
        assert_eq!(cols[0], Column::Int(vec![None, None]));
        assert_eq!(cols[2], Column::Float(vec![Some(0.5), None]));
    }

    #[test]
    fn schema_names_and_labels_are_checked() {
        let two_labels =
            vec![Field { name: "a".into(), ty: FieldType::Label }, Field { name: "b".into(), ty: FieldType::Label }];
        assert!(Schema::new(two_labels).is_err());
        assert!(Schema::new(vec![Field { name: "a b".into(), ty: FieldType::Int }]).is_err());
        let twice =
            vec![Field { name: "a".into(), ty: FieldType::Int }, Field { name: "a".into(), ty: FieldType::Bool }];
        assert!(Schema::new(twice).is_err());
        let inferred = Schema::infer(&AttrBatch::new(1).with("label", Column::Int(vec![Some(3)]))).unwrap();
        assert_eq!(inferred.fields[0].ty, FieldType::Label);
    }

    #[test]
    fn block_round_trips_and_refuses_another_schema() {
        let s = schema();
        let cols = AttrBatch::new(2)
            .with("label", Column::Int(vec![Some(1), Some(2)]))
            .with("tenant", Column::Keyword(vec![Some("a".into()), None]))
            .normalise(&s)
            .unwrap();
        let bytes = encode_block(&s, &cols).unwrap();
        assert_eq!(decode_block(&bytes, &s, 2).unwrap(), cols);
        assert!(decode_block(&bytes, &s, 3).is_err(), "row count checked");
        let other = Schema::new(vec![Field { name: "label".into(), ty: FieldType::Label }]).unwrap();
        assert!(decode_block(&bytes, &other, 2).is_err(), "names checked");
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode_block(&extra, &s, 2).is_err(), "trailing bytes");
    }

    #[test]
    fn table_remove_update_and_extract_follow_ids() {
        let s = schema();
        let mut t = AttrTable::new(s.clone());
        let cols =
            AttrBatch::new(3).with("label", Column::Int(vec![Some(10), Some(11), Some(12)])).normalise(&s).unwrap();
        t.append(&[1, 2, 3], Some(&cols));
        t.remove(&[1]);
        // Row 3 moved into row 0's place: its label must follow it.
        assert_eq!(t.label(3), Some(12));
        assert_eq!(t.label(2), Some(11));
        assert_eq!(t.label(1), None);
        t.update(&[2], &AttrBatch::new(1).with("label", Column::Int(vec![Some(7)]))).unwrap();
        assert_eq!(t.label(2), Some(7));
        assert!(t.update(&[9], &AttrBatch::new(1).with("label", Column::Int(vec![Some(7)]))).is_err());
        assert_eq!(t.extract(&[3, 2])[0], Column::Int(vec![Some(12), Some(7)]));
    }

    /// A table without a schema keeps its ids as runs (one run, 16 bytes, for ids in sequence) and
    /// answers as a laid-out table would: membership, the empty row, a duplicate add refused, removal,
    /// a field-free filter over every row; declaring a schema then lays every id out with null fields
    /// that can be set. Mutations caught: `contains` or `row` of the runs answering for a removed or
    /// never-added id, `lay_out` losing or repeating ids (lengths and labels differ), `evaluate`
    /// without the ids of the runs (an empty match), a schemaless append that lays the rows out (the
    /// heap bytes grow per row).
    #[test]
    fn a_table_without_a_schema_keeps_runs_of_ids_and_lays_them_out_for_a_schema() {
        let mut t = AttrTable::default();
        let ids: Vec<u64> = (100..10_100).collect();
        for chunk in ids.chunks(1000) {
            t.add(chunk, None).unwrap();
        }
        assert_eq!(t.len(), 10_000);
        assert!(t.row_heap_bytes() <= 64, "one run, not a row each: {} bytes", t.row_heap_bytes());
        assert!(t.add(&[5, 100], None).is_err(), "id 100 has a row");
        t.delete(&[100, 5000, 5001, 99_999]);
        assert_eq!(t.len(), 9_997);
        for id in [99, 100, 5000, 5001, 10_100] {
            assert!(!t.contains(id) && t.row(id).is_none(), "id {id}");
        }
        for id in [101, 4999, 5002, 10_099] {
            assert!(t.contains(id) && t.row(id) == Some(Vec::new()), "id {id}");
        }
        let want: Vec<u64> = ids.iter().copied().filter(|id| ![100, 5000, 5001].contains(id)).collect();
        assert_eq!(t.evaluate(&crate::Filter::And(Vec::new())).unwrap(), want, "every row matches");
        assert!(t.evaluate(&crate::Filter::Or(Vec::new())).unwrap().is_empty());
        // Scattered ids are laid out rather than kept as a run each.
        let mut scattered = AttrTable::default();
        scattered.add(&(0..20_000u64).map(|i| i * 2).collect::<Vec<_>>(), None).unwrap();
        assert!(matches!(scattered.rows, Rows::Laid { .. }));
        assert!(scattered.contains(39_998) && !scattered.contains(39_997));

        t.declare(schema()).unwrap();
        assert_eq!(t.len(), 9_997);
        assert_eq!(t.ids().len(), 9_997);
        assert!(t.contains(101) && !t.contains(5000));
        assert_eq!(t.label(101), None, "declared fields are null");
        t.set(&[101, 10_099], &AttrBatch::new(2).with("label", Column::Int(vec![Some(4), Some(5)]))).unwrap();
        assert_eq!((t.label(101), t.label(10_099), t.label(102)), (Some(4), Some(5), None));
        let four = crate::Filter::Eq { field: "label".into(), value: crate::Scalar::Int(4) };
        assert_eq!(t.evaluate(&four).unwrap(), vec![101]);
    }
}
