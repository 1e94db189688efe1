//! Attributes between Python and the engine: a dict of columns (numpy arrays of int64, float64 or bool,
//! or sequences of Python values) into an `AttrBatch`, and the attributes of hits back into Python lists.
//!
//! The package (`python/m2m/_engine.py`) first turns other numpy dtypes, pandas and pyarrow columns and
//! JSON payloads (dicts) into those forms; here each value's Python type gives the column's kind.

use m2m::{AttrBatch, Column, M2m, Value};
use numpy::{PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::invalid;

/// One Python value of a sequence column.
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tags(Vec<String>),
}

impl Cell {
    fn kind(&self) -> &'static str {
        match self {
            Cell::Null => "null",
            Cell::Bool(_) => "bool",
            Cell::Int(_) => "int",
            Cell::Float(_) => "float",
            Cell::Str(_) => "str",
            Cell::Bytes(_) => "bytes",
            Cell::Tags(_) => "list of str",
        }
    }
}

fn string(v: &Bound<'_, PyAny>, name: &str, row: usize) -> PyResult<String> {
    v.extract::<String>()
        .map_err(|_| invalid(format!("attribute {name:?} row {row}: a string that is not valid UTF-8")))
}

fn cell(v: &Bound<'_, PyAny>, name: &str, row: usize) -> PyResult<Cell> {
    if v.is_none() {
        return Ok(Cell::Null);
    }
    if v.is_instance_of::<PyBool>() {
        return Ok(Cell::Bool(v.extract()?));
    }
    if v.is_instance_of::<PyInt>() {
        return v
            .extract::<i64>()
            .map(Cell::Int)
            .map_err(|_| invalid(format!("attribute {name:?} row {row}: {v} is outside the 64-bit signed integers")));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(Cell::Float(v.extract()?));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(Cell::Str(string(v, name, row)?));
    }
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Cell::Bytes(b.as_bytes().to_vec()));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let mut tags = Vec::new();
        for t in v.try_iter()? {
            let t = t?;
            if !t.is_instance_of::<PyString>() {
                return Err(invalid(format!("attribute {name:?} row {row}: tags are strings, not {}", t.get_type())));
            }
            tags.push(string(&t, name, row)?);
        }
        return Ok(Cell::Tags(tags));
    }
    Err(invalid(format!(
        "attribute {name:?} row {row}: a {} (values are None, bool, int, float, str, bytes or a list of str)",
        v.get_type()
    )))
}

/// A column from a sequence of Python values: the kind of its non-null values (ints and floats together
/// make floats); `None` when every value is null (the field is left out: null).
fn sequence(v: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<Column>> {
    let mut cells = Vec::new();
    for (row, item) in v.try_iter().map_err(|_| invalid(format!("attribute {name:?}: not a sequence")))?.enumerate() {
        cells.push(cell(&item?, name, row)?);
    }
    let mut kind: Option<(&'static str, usize)> = None;
    for (row, c) in cells.iter().enumerate() {
        let k = c.kind();
        kind = match (kind, k) {
            (_, "null") => kind,
            (None, k) => Some((k, row)),
            (Some((was, r)), k) if was == k => Some((was, r)),
            (Some(("int", _)), "float") | (Some(("float", _)), "int") => Some(("float", row)),
            (Some((was, r)), k) => {
                return Err(invalid(format!("attribute {name:?} row {row}: a {k} in a column of {was} (row {r})")));
            }
        };
    }
    let Some((kind, _)) = kind else { return Ok(None) };
    Ok(Some(match kind {
        "bool" => Column::Bool(cells.iter().map(|c| if let Cell::Bool(b) = c { Some(*b) } else { None }).collect()),
        "int" => Column::Int(cells.iter().map(|c| if let Cell::Int(i) = c { Some(*i) } else { None }).collect()),
        "float" => Column::Float(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Float(x) => Some(*x),
                    Cell::Int(i) => Some(*i as f64),
                    _ => None,
                })
                .collect(),
        ),
        "str" => {
            Column::Keyword(cells.into_iter().map(|c| if let Cell::Str(s) = c { Some(s) } else { None }).collect())
        }
        "bytes" => {
            Column::Bytes(cells.into_iter().map(|c| if let Cell::Bytes(b) = c { Some(b) } else { None }).collect())
        }
        _ => Column::Tags(cells.into_iter().map(|c| if let Cell::Tags(t) = c { Some(t) } else { None }).collect()),
    }))
}

/// The attributes of `rows` rows from a dict of columns (numpy int64 / float64 / bool arrays are read
/// without a per-value Python call). Wrong lengths, unknown fields and types the schema refuses are the
/// engine's errors, raised when the batch is added.
pub(crate) fn batch(dict: &Bound<'_, PyDict>, rows: usize) -> PyResult<AttrBatch> {
    let mut out = AttrBatch::new(rows);
    for (k, v) in dict.iter() {
        let name: String = k.extract().map_err(|_| invalid(format!("attribute names are strings, not {k}")))?;
        let col = if let Ok(a) = v.extract::<PyReadonlyArray1<'_, i64>>() {
            Some(Column::Int(a.as_array().iter().map(|&x| Some(x)).collect()))
        } else if let Ok(a) = v.extract::<PyReadonlyArray1<'_, f64>>() {
            Some(Column::Float(a.as_array().iter().map(|&x| Some(x)).collect()))
        } else if let Ok(a) = v.extract::<PyReadonlyArray1<'_, bool>>() {
            Some(Column::Bool(a.as_array().iter().map(|&x| Some(x)).collect()))
        } else if let Ok(a) = v.cast::<numpy::PyUntypedArray>() {
            return Err(invalid(format!(
                "attribute {name:?}: a numpy array of {} (int64, float64 or bool)",
                a.dtype()
            )));
        } else {
            sequence(&v, &name)?
        };
        if let Some(col) = col {
            out = out.with(name, col);
        }
    }
    Ok(out)
}

/// The attributes of `ids` as a dict from field name to a list aligned with `ids` (None where a row has
/// no value, or for an id that is not live: the padding of a filtered batch included).
pub(crate) fn of_ids<'py>(py: Python<'py>, engine: &M2m, ids: &[u64]) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    let Some(schema) = engine.schema() else { return Ok(out) };
    let mut cols: Vec<Vec<Py<PyAny>>> = (0..schema.fields.len()).map(|_| Vec::with_capacity(ids.len())).collect();
    for &id in ids {
        let row = engine.attributes(id);
        for (k, col) in cols.iter_mut().enumerate() {
            let v = row.as_ref().and_then(|r| r.get(k)).and_then(|(_, v)| v.as_ref());
            col.push(match v {
                None => py.None(),
                Some(Value::Int(i)) => i.into_pyobject(py)?.into_any().unbind(),
                Some(Value::Float(x)) => x.into_pyobject(py)?.into_any().unbind(),
                Some(Value::Bool(b)) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
                Some(Value::Keyword(s)) => s.into_pyobject(py)?.into_any().unbind(),
                Some(Value::Tags(t)) => PyList::new(py, t)?.into_any().unbind(),
                Some(Value::Bytes(b)) => PyBytes::new(py, b).into_any().unbind(),
            });
        }
    }
    for (f, col) in schema.fields.iter().zip(cols) {
        out.set_item(&f.name, PyList::new(py, col)?)?;
    }
    Ok(out)
}
