//! `m2m ingest --attributes FILE` and the attributes in `query` and `info`: JSON lines or a Parquet file
//! of attributes by id read into columns, and attributes written back as JSON.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result, bail};
use m2m::tier::Storage;
use m2m::{AttrBatch, Attribute, Column, M2m, Schema, Value};
use serde_json::{Map, Value as Json};

/// Ids per `set_attributes` call.
const CHUNK: usize = 100_000;

/// The kind of column a JSON value goes into: integer, float, bool, string (keyword), array of strings
/// (tags), object (a JSON payload, stored as its text); `None` for a null. An integer outside i64 has no
/// kind (it would silently become a float).
fn kind_of(v: &Json) -> Option<Storage> {
    Some(match v {
        Json::Number(n) if n.is_i64() => Storage::Int,
        Json::Number(n) if n.is_u64() => return None,
        Json::Number(_) => Storage::Float,
        Json::Bool(_) => Storage::Bool,
        Json::String(_) => Storage::Keyword,
        Json::Array(_) => Storage::Tags,
        Json::Object(_) => Storage::Bytes,
        Json::Null => return None,
    })
}

/// A kind of column as the schema names its values, with its article: `an int`, `a payload`...
fn kind_name(kind: Storage) -> &'static str {
    match kind {
        Storage::Int => "an int",
        Storage::Float => "a float",
        Storage::Bool => "a bool",
        Storage::Keyword => "a keyword",
        Storage::Tags => "a tags",
        Storage::Bytes => "a payload",
    }
}

/// One value of a row: a JSON value, or raw bytes (a Parquet binary column: a payload as it is).
#[derive(Debug)]
enum Cell {
    Json(Json),
    Bytes(Vec<u8>),
}

impl Cell {
    fn json(&self) -> Option<&Json> {
        match self {
            Cell::Json(v) => Some(v),
            Cell::Bytes(_) => None,
        }
    }

    fn is_null(&self) -> bool {
        self.json().is_some_and(Json::is_null)
    }

    fn kind(&self) -> Option<Storage> {
        match self {
            Cell::Json(v) => kind_of(v),
            Cell::Bytes(_) => Some(Storage::Bytes),
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Json(v) => write!(f, "{v}"),
            Cell::Bytes(b) => write!(f, "{} bytes", b.len()),
        }
    }
}

/// A row of a file: where it is (`line 3`, `row 3`) and its fields by name.
struct Row {
    at: String,
    fields: Vec<(String, Cell)>,
}

impl Row {
    fn get(&self, name: &str) -> Option<&Cell> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// Appends `v` (or a null) to `col`; false when `v` does not fit the column's kind.
fn push(col: &mut Column, v: Option<&Cell>) -> bool {
    if let (Column::Bytes(c), Some(Cell::Bytes(b))) = (&mut *col, v) {
        c.push(Some(b.clone()));
        return true;
    }
    let v = match v {
        None => None,
        Some(Cell::Bytes(_)) => return false,
        Some(Cell::Json(v)) => Some(v).filter(|v| !v.is_null()),
    };
    match col {
        Column::Int(c) => match v {
            None => c.push(None),
            Some(v) => match v.as_i64() {
                Some(i) => c.push(Some(i)),
                None => return false,
            },
        },
        Column::Float(c) => match v {
            None => c.push(None),
            Some(v) => match v.as_f64() {
                Some(x) => c.push(Some(x)),
                None => return false,
            },
        },
        Column::Bool(c) => match v {
            None => c.push(None),
            Some(Json::Bool(b)) => c.push(Some(*b)),
            Some(_) => return false,
        },
        Column::Keyword(c) => match v {
            None => c.push(None),
            Some(Json::String(s)) => c.push(Some(s.clone())),
            Some(_) => return false,
        },
        Column::Tags(c) => match v {
            None => c.push(None),
            Some(Json::Array(a)) => {
                let tags: Option<Vec<String>> = a.iter().map(|t| t.as_str().map(str::to_string)).collect();
                match tags {
                    Some(t) => c.push(Some(t)),
                    None => return false,
                }
            }
            Some(_) => return false,
        },
        Column::Bytes(c) => match v {
            None => c.push(None),
            Some(v @ Json::Object(_)) => c.push(Some(v.to_string().into_bytes())),
            Some(_) => return false,
        },
    }
    true
}

/// The attributes of a file, read whole and checked: ids (distinct), the columns (checked against
/// `schema`, the database's or the one the file implies).
pub(crate) struct Prepared {
    pub ids: Vec<u64>,
    pub batch: AttrBatch,
    pub schema: Schema,
}

/// Reads an attributes file: Parquet when it starts with Parquet's magic bytes (`PAR1`), JSON lines
/// otherwise. See [`read_jsonl`] and [`read_parquet`]; both are checked the same way.
pub(crate) fn read_attributes(path: &Path, schema: Option<&Schema>) -> Result<Prepared> {
    let mut magic = [0u8; 4];
    let is_parquet = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        f.read(&mut magic).with_context(|| format!("{}", path.display()))? == 4 && &magic == b"PAR1"
    };
    if is_parquet {
        // The Parquet reader is a third party's parser of hostile bytes: a panic in it (a forged footer
        // has made it panic) is a refused file, not a crash.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let read = std::panic::catch_unwind(|| read_parquet(path, schema));
        std::panic::set_hook(hook);
        read.unwrap_or_else(|_| bail!("{}: not a readable Parquet file (its metadata is inconsistent)", path.display()))
    } else {
        read_jsonl(path, schema)
    }
}

/// Reads a JSON-lines file of objects, each with an integer `id` and the row's fields, into ids and
/// columns (a missing field is null). Without a `schema`, a field's kind is the one all its non-null
/// values share (integers and floats together make a float field; any other mix is an error naming the
/// line). With one, its types decide (an integer in a float field is read as a float). Every error names
/// the file and line: a line that is not a JSON object, a missing or non-integer id, an id given twice,
/// a value that does not fit its field, and whatever the schema refuses (unknown field, an empty keyword).
pub(crate) fn read_jsonl(path: &Path, schema: Option<&Schema>) -> Result<Prepared> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {}", n + 1);
        let obj: Map<String, Json> =
            serde_json::from_str(&line).with_context(|| format!("{}: {at}", path.display()))?;
        rows.push(Row { at, fields: obj.into_iter().map(|(k, v)| (k, Cell::Json(v))).collect() });
    }
    if rows.is_empty() {
        bail!("{}: no rows (an empty file)", path.display());
    }
    prepare(path, rows, schema, &[])
}

/// Reads a Parquet file (one row per splat, an integer `id` column and the fields; snappy, gzip, LZ4 or
/// uncompressed pages) into ids and columns, as [`read_jsonl`] reads JSON lines: integer columns (8 to
/// 64 bits, signed or not, and dates as days) make integer fields, floats float fields, booleans bool
/// fields, strings keyword fields, lists of strings tag fields, binary columns payloads (the bytes as
/// they are), structs and maps JSON payloads, and timestamps timestamp fields in microseconds since the
/// Unix epoch (milliseconds are converted). A null is a missing value. Errors name the file and the row
/// (from 1): a decimal or a time of day (no field type holds them: cast them first), a non-finite float,
/// a compression this build does not read (zstd, brotli), a file without rows, and every check of
/// [`read_jsonl`]. Nanosecond timestamps are floored to microseconds.
pub(crate) fn read_parquet(path: &Path, schema: Option<&Schema>) -> Result<Prepared> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    use parquet::basic::{ConvertedType, LogicalType, TimeUnit};
    use parquet::record::Field as F;
    // Top-level columns by logical type: timestamps (those in nanoseconds arrive as plain integers and
    // are floored to microseconds here), and times of day stored as plain integers (refused like the
    // others).
    let (mut timestamps, mut nanos, mut times) = (Vec::new(), Vec::new(), Vec::new());
    for col in reader.metadata().file_metadata().schema_descr().columns() {
        if col.path().parts().len() != 1 {
            continue;
        }
        let name = col.name().to_string();
        match col.logical_type_ref() {
            Some(LogicalType::Timestamp(ts)) => {
                if matches!(ts.unit, TimeUnit::NANOS) {
                    nanos.push(name.clone());
                }
                timestamps.push(name);
            }
            Some(LogicalType::Time { .. }) => times.push(name),
            _ if matches!(col.converted_type(), ConvertedType::TIMESTAMP_MILLIS | ConvertedType::TIMESTAMP_MICROS) => {
                timestamps.push(name);
            }
            _ => {}
        }
    }
    let mut rows = Vec::new();
    for (n, row) in reader.into_iter().enumerate() {
        let at = format!("row {}", n + 1);
        let row = row.with_context(|| format!("{}: {at}", path.display()))?;
        let mut fields = Vec::new();
        for (name, field) in row.into_columns() {
            let field = match field {
                F::Long(ns) if nanos.contains(&name) => F::Long(ns.div_euclid(1000)),
                F::Null => F::Null,
                _ if times.contains(&name) => {
                    bail!(
                        "{}: {at}: field {name:?}: a time of day: no field type holds one (cast it to an integer)",
                        path.display()
                    )
                }
                other => other,
            };
            let cell =
                cell_of(field).map_err(|why| anyhow::anyhow!("{}: {at}: field {name:?}: {why}", path.display()))?;
            fields.push((name, cell));
        }
        rows.push(Row { at, fields });
    }
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    prepare(path, rows, schema, &timestamps)
}

/// A Parquet value as a cell (see [`read_parquet`]), or why it has no field type.
fn cell_of(field: parquet::record::Field) -> std::result::Result<Cell, String> {
    use parquet::record::Field as F;
    let number = |x: f64| {
        serde_json::Number::from_f64(x).map(|n| Cell::Json(Json::Number(n))).ok_or_else(|| format!("{x} is not finite"))
    };
    Ok(match field {
        F::Null => Cell::Json(Json::Null),
        F::Bool(b) => Cell::Json(Json::Bool(b)),
        F::Byte(i) => Cell::Json(i.into()),
        F::Short(i) => Cell::Json(i.into()),
        F::Int(i) | F::Date(i) => Cell::Json(i.into()),
        F::Long(i) | F::TimestampMicros(i) => Cell::Json(i.into()),
        F::TimestampMillis(i) => Cell::Json(
            i.checked_mul(1000).ok_or_else(|| format!("{i} ms is outside the microsecond timestamps"))?.into(),
        ),
        F::UByte(i) => Cell::Json(i.into()),
        F::UShort(i) => Cell::Json(i.into()),
        F::UInt(i) => Cell::Json(i.into()),
        F::ULong(i) => Cell::Json(i.into()),
        F::Float16(x) => number(f64::from(x))?,
        F::Float(x) => number(f64::from(x))?,
        F::Double(x) => number(x)?,
        F::Str(s) => Cell::Json(Json::String(s)),
        F::Bytes(b) => Cell::Bytes(b.data().to_vec()),
        F::ListInternal(list) => {
            let items: std::result::Result<Vec<Json>, String> = list
                .elements()
                .iter()
                .map(|e| match e {
                    F::Str(s) => Ok(Json::String(s.clone())),
                    other => Err(format!("a list of {other} values: only lists of strings (tags) are fields")),
                })
                .collect();
            Cell::Json(Json::Array(items?))
        }
        group @ (F::Group(_) | F::MapInternal(_)) => match group.to_json_value() {
            v @ Json::Object(_) => Cell::Json(v),
            other => Cell::Json(serde_json::json!({ "value": other })),
        },
        F::Decimal(_) => return Err("a decimal: no field type holds one (cast it to a float or an integer)".into()),
        F::TimeMillis(_) | F::TimeMicros(_) => {
            return Err("a time of day: no field type holds one (cast it to an integer)".into());
        }
    })
}

/// The rows of a file (each with an integer `id`) checked and made columns: the body of [`read_jsonl`]
/// and [`read_parquet`]. `timestamps` names the columns whose inferred type is a timestamp.
fn prepare(path: &Path, rows: Vec<Row>, schema: Option<&Schema>, timestamps: &[String]) -> Result<Prepared> {
    let mut ids = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    // Field names in first-seen order, with their kind so far and the row that set it.
    let mut kinds: Vec<(String, Option<(Storage, usize)>)> = Vec::new();
    for (n, row) in rows.iter().enumerate() {
        let at = || format!("{}: {}", path.display(), row.at);
        let Some(id) = row.get("id").and_then(Cell::json).and_then(Json::as_u64) else {
            bail!("{}: no \"id\" that is an integer from 0 to 2^64 - 1", at())
        };
        if let Some(first) = seen.insert(id, n) {
            bail!("{}: id {id} again (first on {})", at(), rows[first].at);
        }
        ids.push(id);
        for (k, v) in row.fields.iter().filter(|(k, _)| k.as_str() != "id") {
            if v.json().is_some_and(|v| v.as_u64().is_some_and(|_| !v.is_i64())) {
                bail!("{}: field {k:?}: {v} is outside the 64-bit signed integers", at());
            }
            let slot = match kinds.iter().position(|(name, _)| name == k) {
                Some(i) => i,
                None => {
                    kinds.push((k.clone(), None));
                    kinds.len() - 1
                }
            };
            let Some(kind) = v.kind() else { continue };
            let merged = match kinds[slot].1 {
                None => (kind, n),
                Some((was, first)) if was == kind => (was, first),
                Some((Storage::Int, _)) | Some((Storage::Float, _))
                    if matches!(kind, Storage::Int | Storage::Float) =>
                {
                    (Storage::Float, n)
                }
                Some((was, first)) => {
                    bail!(
                        "{}: field {k:?}: {v} is not {} value like the one on {}",
                        at(),
                        kind_name(was),
                        rows[first].at
                    )
                }
            };
            kinds[slot].1 = Some(merged);
        }
    }
    let columns: Vec<(String, Storage)> = match schema {
        Some(s) => s.fields.iter().map(|f| (f.name.clone(), f.ty.storage())).collect(),
        // A field that is null on every row has no kind and is left out.
        None => kinds.iter().filter_map(|(name, k)| k.map(|(k, _)| (name.clone(), k))).collect(),
    };
    let mut cols: Vec<Column> = columns.iter().map(|(_, k)| Column::nulls(*k, 0)).collect();
    for row in &rows {
        for (name, v) in row.fields.iter().filter(|(k, _)| k.as_str() != "id") {
            if !columns.iter().any(|(c, _)| c == name) && !v.is_null() {
                bail!("{}: {}: field {name:?} is not in the database's schema", path.display(), row.at);
            }
        }
        for ((name, _), col) in columns.iter().zip(&mut cols) {
            let v = row.get(name);
            if !push(col, v) {
                let shown = v.map_or_else(|| "null".to_string(), ToString::to_string);
                bail!(
                    "{}: {}: field {name:?}: {shown} does not fit {} field",
                    path.display(),
                    row.at,
                    kind_name(col.storage())
                );
            }
        }
    }
    let mut batch = AttrBatch::new(ids.len());
    for ((name, _), col) in columns.into_iter().zip(cols) {
        batch = batch.with(name, col);
    }
    let schema = match schema {
        Some(s) => s.clone(),
        None => {
            let mut inferred = Schema::infer(&batch).with_context(|| format!("{}", path.display()))?;
            // A Parquet timestamp column is a timestamp field, not a plain integer.
            for f in &mut inferred.fields {
                if timestamps.contains(&f.name) && f.ty == m2m::tier::FieldType::Int {
                    f.ty = m2m::tier::FieldType::Timestamp;
                }
            }
            inferred
        }
    };
    // The schema's own checks (keyword lengths, a non-finite float), with the row it names.
    if let Err(e) = batch.normalise(&schema) {
        let at = match &e {
            m2m::tier::Error::InvalidAttributes { reason, .. } => reason
                .strip_prefix("row ")
                .and_then(|r| r.split(':').next())
                .and_then(|r| r.parse::<usize>().ok())
                .and_then(|r| rows.get(r))
                .map(|row| format!(": {}", row.at)),
            _ => None,
        };
        bail!("{}{}: {e}", path.display(), at.unwrap_or_default());
    }
    Ok(Prepared { ids, batch, schema })
}

/// Refuses, before any vector is written, an id that can be no splat once this ingest is done: not in
/// the database (`engine`, `None` for a new one) and not among the `incoming` ids the ingest assigns next.
/// An id that passes can still be left out (a file already ingested adds no row); [`apply`] checks
/// again after the ingest.
pub(crate) fn check_ids(path: &Path, ids: &[u64], engine: Option<&M2m>, incoming: u64) -> Result<()> {
    let next = match engine {
        None => Some(0),
        Some(e) => e.next_ids(1).ok().and_then(|v| v.first().copied()),
    };
    let possible =
        |id: u64| engine.is_some_and(|e| e.contains(id)) || next.is_some_and(|n| id >= n && id - n < incoming);
    if let Some(id) = ids.iter().find(|&&id| !possible(id)) {
        bail!(
            "{}: id {id} is not a splat of the database, nor one this ingest can add (nothing was written)",
            path.display()
        );
    }
    Ok(())
}

/// Sets the attributes `prepared` (from [`read_attributes`], checked whole before the vectors were ingested)
/// on the engine's splats by id, declaring the schema first when the database has none; returns the
/// rows set. An id that is not a splat of the database is refused before anything is set.
pub(crate) fn apply(engine: &mut M2m, path: &Path, prepared: Prepared) -> Result<usize> {
    let Prepared { ids, batch, schema } = prepared;
    if let Some(id) = ids.iter().find(|id| !engine.contains(**id)) {
        bail!("{}: id {id} is not a splat of the database", path.display());
    }
    if engine.schema().is_none() {
        engine.set_schema(schema).with_context(|| format!("{}", path.display()))?;
    }
    for start in (0..ids.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(ids.len());
        let part = AttrBatch {
            rows: end - start,
            columns: batch.columns.iter().map(|(n, c)| (n.clone(), slice(c, start, end))).collect(),
        };
        engine.set_attributes(&ids[start..end], &part).with_context(|| format!("{}", path.display()))?;
    }
    engine.flush()?;
    Ok(ids.len())
}

fn slice(c: &Column, a: usize, b: usize) -> Column {
    match c {
        Column::Int(v) => Column::Int(v[a..b].to_vec()),
        Column::Float(v) => Column::Float(v[a..b].to_vec()),
        Column::Bool(v) => Column::Bool(v[a..b].to_vec()),
        Column::Keyword(v) => Column::Keyword(v[a..b].to_vec()),
        Column::Tags(v) => Column::Tags(v[a..b].to_vec()),
        Column::Bytes(v) => Column::Bytes(v[a..b].to_vec()),
    }
}

/// A hit's attributes as a JSON object. A payload whose bytes are the text of a JSON object (what
/// `ingest --attributes` stores for an object) is shown as that object; any other bytes as
/// `{"bytes_hex": "..."}`, so that bytes are never mistaken for a JSON number, string or array.
pub(crate) fn to_json(attrs: &[Attribute]) -> Json {
    let mut out = Map::new();
    for (name, v) in attrs {
        let j = match v {
            None => Json::Null,
            Some(Value::Bytes(b)) => match serde_json::from_slice::<Json>(b) {
                Ok(object @ Json::Object(_)) => object,
                _ => serde_json::json!({ "bytes_hex": hex(b) }),
            },
            Some(v) => serde_json::to_value(v).unwrap_or(Json::Null),
        };
        out.insert(name.clone(), j);
    }
    Json::Object(out)
}

/// Lower-case hexadecimal, two digits a byte.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|&b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char]).collect()
}

/// The schema in one line: `name:type` per field.
pub(crate) fn schema_line(s: &Schema) -> String {
    s.fields
        .iter()
        .map(|f| {
            format!(
                "{}:{}",
                f.name,
                serde_json::to_value(f.ty).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Catches the earlier printing, where bytes that happen to be JSON text ("123", "[1]", "\"a\"")
    // came out as that JSON and other bytes as an array of numbers: neither could be told from a JSON
    // payload. A JSON object stays the object (what `ingest --attributes` stores).
    #[test]
    fn bytes_payloads_print_as_hex_unless_they_are_a_json_object() {
        let attrs: Vec<Attribute> = vec![
            ("doc".into(), Some(Value::Bytes(br#"{"n": 1}"#.to_vec()))),
            ("digits".into(), Some(Value::Bytes(b"123".to_vec()))),
            ("array".into(), Some(Value::Bytes(b"[1]".to_vec()))),
            ("raw".into(), Some(Value::Bytes(vec![0x00, 0xab, 0xff]))),
            ("empty".into(), Some(Value::Bytes(Vec::new()))),
            ("none".into(), None),
        ];
        let j = to_json(&attrs);
        assert_eq!(j["doc"], serde_json::json!({ "n": 1 }));
        assert_eq!(j["digits"], serde_json::json!({ "bytes_hex": "313233" }));
        assert_eq!(j["array"], serde_json::json!({ "bytes_hex": "5b315d" }));
        assert_eq!(j["raw"], serde_json::json!({ "bytes_hex": "00abff" }));
        assert_eq!(j["empty"], serde_json::json!({ "bytes_hex": "" }));
        assert_eq!(j["none"], Json::Null);
    }
}
