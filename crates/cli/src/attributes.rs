//! `m2m ingest --attributes FILE` and the attributes in `query` and `info`: JSON lines of attributes by
//! id read into columns, and attributes written back as JSON.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result, bail};
use m2m::{AttrBatch, Attribute, Column, M2m, Schema, Value};
use serde_json::{Map, Value as Json};

/// Ids per `set_attributes` call.
const CHUNK: usize = 100_000;

/// The kind of column a JSON value goes into: integer, float, bool, string (keyword), array of strings
/// (tags), object (a JSON payload, stored as its text).
fn empty_like(v: &Json) -> Option<Column> {
    Some(match v {
        Json::Number(n) if n.is_i64() => Column::Int(Vec::new()),
        Json::Number(_) => Column::Float(Vec::new()),
        Json::Bool(_) => Column::Bool(Vec::new()),
        Json::String(_) => Column::Keyword(Vec::new()),
        Json::Array(_) => Column::Tags(Vec::new()),
        Json::Object(_) => Column::Bytes(Vec::new()),
        Json::Null => return None,
    })
}

/// Appends `v` (or a null) to `col`; false when `v` does not fit the column's kind.
fn push(col: &mut Column, v: Option<&Json>) -> bool {
    let v = v.filter(|v| !v.is_null());
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

/// Reads a JSON-lines file of objects, each with an integer `id` and the row's fields, into ids and
/// columns (a field's kind from its first non-null value; a missing field is null). `schema`, when the
/// database has one, gives the kinds instead (so an integer in a float field is read as a float).
pub(crate) fn read_jsonl(path: &Path, schema: Option<&Schema>) -> Result<(Vec<u64>, AttrBatch)> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut ids = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut cols: HashMap<String, Column> = HashMap::new();
    if let Some(s) = schema {
        for f in &s.fields {
            names.push(f.name.clone());
            cols.insert(f.name.clone(), Column::nulls(f.ty.storage(), 0));
        }
    }
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}: line {}", path.display(), n + 1);
        let obj: Map<String, Json> = serde_json::from_str(&line).with_context(at)?;
        let Some(id) = obj.get("id").and_then(Json::as_u64) else { bail!("{}: no integer \"id\"", at()) };
        let row = ids.len();
        ids.push(id);
        for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "id") {
            if !cols.contains_key(k) {
                let Some(mut col) = empty_like(v) else { continue };
                for _ in 0..row {
                    push(&mut col, None);
                }
                names.push(k.clone());
                cols.insert(k.clone(), col);
            }
        }
        for name in &names {
            let col = cols.get_mut(name).context("a column")?;
            if !push(col, obj.get(name)) {
                bail!("{}: field {name:?}: {} does not fit a {:?} column", at(), obj[name], col.storage());
            }
        }
    }
    let mut batch = AttrBatch::new(ids.len());
    for name in names {
        let col = cols.remove(&name).context("a column")?;
        batch = batch.with(name, col);
    }
    Ok((ids, batch))
}

/// Sets the attributes of `path` on the engine's splats by id (the schema inferred from the file when
/// the database has none); returns the rows set.
pub(crate) fn apply(engine: &mut M2m, path: &Path) -> Result<usize> {
    let (ids, batch) = read_jsonl(path, engine.schema().as_ref())?;
    if engine.schema().is_none() {
        engine.set_schema(Schema::infer(&batch)?).with_context(|| format!("{}", path.display()))?;
    }
    if let Some(id) = ids.iter().find(|id| !engine.contains(**id)) {
        bail!("{}: id {id} is not a splat of the database", path.display());
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

/// A hit's attributes as a JSON object (a payload that is JSON text as that JSON, other bytes as an
/// array of numbers).
pub(crate) fn to_json(attrs: &[Attribute]) -> Json {
    let mut out = Map::new();
    for (name, v) in attrs {
        let j = match v {
            None => Json::Null,
            Some(Value::Bytes(b)) => serde_json::from_slice(b).unwrap_or_else(|_| serde_json::json!(b)),
            Some(v) => serde_json::to_value(v).unwrap_or(Json::Null),
        };
        out.insert(name.clone(), j);
    }
    Json::Object(out)
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
