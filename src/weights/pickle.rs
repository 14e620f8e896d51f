//! A restricted pickle machine: rebuilds the state dict a `torch.save` checkpoint's `data.pkl`
//! holds (names → tensors, each a view of a storage), and nothing else.
//!
//! Why our own machine: no crate fits. `serde-pickle` has no persistent ids (`BINPERSID`, how a
//! tensor names its storage) and keeps no global's name (`torch._utils _rebuild_tensor_v2`
//! becomes an anonymous `Global::Other`); candle's and burn's pickle readers live inside those
//! frameworks (a dependency far larger than this file) and accept more than a state dict needs;
//! `repugnant-pickle` is a 0.0.1 scraper. A state dict takes few opcodes, so the machine is small
//! and everything it does is visible here.
//!
//! It accepts what `torch.load(weights_only=True)` accepts for a state dict and no more:
//!
//! - the opcodes torch's weights-only unpickler knows (protocol 2, which `torch.save` writes),
//!   less `NEWOBJ` and `EMPTY_SET`, which no state dict uses: any other opcode (`INST`, `OBJ`,
//!   `STACK_GLOBAL`, `EXT1`, `FRAME`, ...) is refused by name, with its byte offset;
//! - these globals only: `collections.OrderedDict`; `torch._utils._rebuild_tensor`,
//!   `_rebuild_tensor_v2`, `_rebuild_tensor_v3`, `_rebuild_parameter`,
//!   `_rebuild_parameter_with_state`; the storage classes (`torch.FloatStorage`, ...,
//!   `torch.storage.UntypedStorage`) and dtypes (`torch.float32`, ...) that name an element type.
//!   Any other `GLOBAL` (`os.system`, `builtins.eval`, `torch.load`, ...) is refused when it is
//!   read, so nothing is ever looked up, let alone called;
//! - `REDUCE` only of the functions above, with the arguments torch gives them (checked, and
//!   named when wrong); `BUILD` only on an `OrderedDict` (the state dict's `_metadata`, ignored);
//!   `BINPERSID` only of `('storage', storage class, key, location, numel)`.
//!
//! Values are immutable and shared (`Rc`): a memo entry is a copy, so no value can contain
//! itself. Everything is bounded: the stack, the marks, the memo, the nesting of containers
//! (so that dropping a value never recurses deeply), the copying a container's growth may cause,
//! and every length prefix against the bytes that remain. Bad input is a [`PickleError`], never a
//! panic.

use std::collections::HashMap;
use std::rc::Rc;

use super::convert::FloatFormat;

/// The most values on the stack (a state dict's `SETITEMS` holds two per tensor, in batches of
/// a thousand).
const MAX_STACK: usize = 1 << 22;
/// The most open marks: a state dict nests three.
const MAX_MARKS: usize = 256;
/// The most memo entries.
const MAX_MEMO: usize = 1 << 21;
/// The deepest nesting of containers: a state dict's is four.
const MAX_DEPTH: u32 = 64;
/// The most values copied when a shared container is extended (a memoised list appended to,
/// say): bounds the work of a pickle that extends copies of one container again and again.
const MAX_COPIED: usize = 1 << 26;
/// The longest module or name of a `GLOBAL`.
const MAX_GLOBAL_LINE: usize = 256;

/// What is wrong with a pickle, and at which byte of it (the opcode's).
#[derive(Debug)]
pub(super) struct PickleError {
    pub offset: usize,
    pub detail: String,
}

/// An element type: the name messages use (`F32`, `BOOL`, `I64`, ...), its size in bytes, and
/// the float format we convert, if it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Elem {
    pub name: &'static str,
    pub size: usize,
    pub float: Option<FloatFormat>,
}

const fn elem(name: &'static str, size: usize, float: Option<FloatFormat>) -> Elem {
    Elem { name, size, float }
}

/// Element types by storage class (`torch.<X>Storage`; empty when there is none) and by dtype
/// (`torch.<x>`).
const ELEMS: &[(&str, &str, Elem)] = &[
    ("FloatStorage", "float32", elem("F32", 4, Some(FloatFormat::F32))),
    ("DoubleStorage", "float64", elem("F64", 8, Some(FloatFormat::F64))),
    ("HalfStorage", "float16", elem("F16", 2, Some(FloatFormat::F16))),
    ("BFloat16Storage", "bfloat16", elem("BF16", 2, Some(FloatFormat::BF16))),
    ("LongStorage", "int64", elem("I64", 8, None)),
    ("IntStorage", "int32", elem("I32", 4, None)),
    ("ShortStorage", "int16", elem("I16", 2, None)),
    ("CharStorage", "int8", elem("I8", 1, None)),
    ("ByteStorage", "uint8", elem("U8", 1, None)),
    ("BoolStorage", "bool", elem("BOOL", 1, None)),
    ("ComplexFloatStorage", "complex64", elem("C64", 8, None)),
    ("ComplexDoubleStorage", "complex128", elem("C128", 16, None)),
    ("", "uint16", elem("U16", 2, None)),
    ("", "uint32", elem("U32", 4, None)),
    ("", "uint64", elem("U64", 8, None)),
    ("", "float8_e4m3fn", elem("F8_E4M3", 1, None)),
    ("", "float8_e5m2", elem("F8_E5M2", 1, None)),
];

/// A global the machine knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Global {
    OrderedDict,
    /// `_rebuild_tensor` (version 1: 4 arguments), `_v2` (6 or 7), `_v3` (7 or 8).
    RebuildTensor(u8),
    /// `_rebuild_parameter` (3 arguments), `_rebuild_parameter_with_state` (4).
    RebuildParameter {
        with_state: bool,
    },
    /// `torch.<X>Storage`: a typed storage, its numel in elements.
    StorageClass(Elem),
    /// `torch.storage.UntypedStorage`: its numel in bytes.
    UntypedStorage,
    /// `torch.<dtype>`.
    Dtype(Elem),
}

/// A storage named by a persistent id: the archive member `data/<key>` holds its bytes.
#[derive(Debug, PartialEq)]
pub(super) struct Storage {
    pub key: String,
    /// `None` for an untyped storage, whose `numel` counts bytes.
    pub elem: Option<Elem>,
    pub numel: u64,
}

impl Storage {
    /// The bytes the storage declares.
    pub fn bytes(&self) -> Option<u64> {
        self.numel.checked_mul(self.elem.map_or(1, |e| e.size) as u64)
    }
}

/// A tensor: a view of `storage`, elements `offset + Σ i_k·strides[k]` (checked to lie inside the
/// storage's declared elements).
#[derive(Debug)]
pub(super) struct TensorRef {
    pub storage: Rc<Storage>,
    pub elem: Elem,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

/// A container's items and how deeply it nests.
#[derive(Debug, Clone)]
pub(super) struct Items<T> {
    pub items: Vec<T>,
    depth: u32,
}

/// A value the machine builds.
#[derive(Debug, Clone)]
pub(super) enum Value {
    None,
    /// A bool or a float: their values are never needed (`requires_grad`, say), only their kind.
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Tuple(Rc<Items<Value>>),
    List(Rc<Items<Value>>),
    /// A `dict` or an `OrderedDict`, in insertion order (keys are not merged: the caller checks).
    Dict(Rc<Items<(Value, Value)>>),
    Global(Global),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(t) | Value::List(t) => t.depth,
            Value::Dict(d) => d.depth,
            _ => 0,
        }
    }

    /// What the value is, for messages (never the value itself, which may be large).
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Tuple(t) => format!("a tuple of {}", t.items.len()),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("the global {}", global_name(g)),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
        }
    }
}

fn global_name(global: &Global) -> String {
    match global {
        Global::OrderedDict => "collections.OrderedDict".into(),
        Global::RebuildTensor(1) => "torch._utils._rebuild_tensor".into(),
        Global::RebuildTensor(v) => format!("torch._utils._rebuild_tensor_v{v}"),
        Global::RebuildParameter { with_state: false } => "torch._utils._rebuild_parameter".into(),
        Global::RebuildParameter { with_state: true } => "torch._utils._rebuild_parameter_with_state".into(),
        Global::StorageClass(e) => {
            format!("torch.{}", ELEMS.iter().find(|(_, _, x)| x == e).map_or("?", |(s, _, _)| s))
        }
        Global::UntypedStorage => "torch.storage.UntypedStorage".into(),
        Global::Dtype(e) => format!("torch.{}", ELEMS.iter().find(|(_, _, x)| x == e).map_or("?", |(_, d, _)| d)),
    }
}

/// The global `module.name`, if the machine allows it.
fn lookup_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor(1)),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensor(2)),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensor(3)),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter { with_state: false }),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameter { with_state: true }),
        ("torch.storage", "UntypedStorage") | ("torch", "UntypedStorage") => Some(Global::UntypedStorage),
        ("torch", name) => ELEMS.iter().find_map(|&(storage, dtype, e)| {
            if !storage.is_empty() && storage == name {
                Some(Global::StorageClass(e))
            } else if dtype == name {
                Some(Global::Dtype(e))
            } else {
                None
            }
        }),
        _ => None,
    }
}

/// The name of a pickle opcode, for messages (`None` for a byte that is no opcode).
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// Runs the pickle `bytes` and returns the value `STOP` pops.
pub(super) fn load(bytes: &[u8]) -> Result<Value, PickleError> {
    Machine { bytes, pos: 0, op_at: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), copied: 0 }.run()
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Where the opcode being run starts, for messages.
    op_at: usize,
    stack: Vec<Value>,
    /// Stack lengths at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    copied: usize,
}

impl Machine<'_> {
    fn error(&self, detail: impl Into<String>) -> PickleError {
        PickleError { offset: self.op_at, detail: detail.into() }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            self.error(format!(
                "{what} needs {n} byte(s), but only {} remain (the pickle is truncated)",
                self.bytes.len() - self.pos
            ))
        })?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn byte(&mut self, what: &str) -> Result<u8, PickleError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, PickleError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `GLOBAL` argument: bytes up to a newline, UTF-8.
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.pos..];
        let Some(n) = rest.iter().take(MAX_GLOBAL_LINE + 1).position(|&b| b == b'\n') else {
            return Err(self.error(if rest.len() <= MAX_GLOBAL_LINE {
                "GLOBAL's module or name is cut off (the pickle is truncated)".to_string()
            } else {
                format!("GLOBAL's module or name is longer than {MAX_GLOBAL_LINE} bytes")
            }));
        };
        let line = std::str::from_utf8(&rest[..n]).map_err(|_| self.error("GLOBAL's module or name is not UTF-8"))?;
        let line = line.to_string();
        self.pos += n + 1;
        Ok(line)
    }

    fn push(&mut self, value: Value) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.error(format!("the stack holds more than {MAX_STACK} values")));
        }
        self.stack.push(value);
        Ok(())
    }

    /// The lowest stack index the current mark frame may pop to.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, op: &str) -> Result<Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.error(format!("{op} finds the stack empty")));
        }
        Ok(self.stack.pop().expect("above the floor"))
    }

    fn top(&mut self, op: &str) -> Result<&mut Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.error(format!("{op} finds the stack empty")));
        }
        Ok(self.stack.last_mut().expect("above the floor"))
    }

    fn pop_mark(&mut self, op: &str) -> Result<Vec<Value>, PickleError> {
        let at = self.marks.pop().ok_or_else(|| self.error(format!("{op} without a MARK")))?;
        Ok(self.stack.split_off(at))
    }

    fn depth_of<'v>(&self, values: impl IntoIterator<Item = &'v Value>) -> Result<u32, PickleError> {
        let depth = values.into_iter().map(Value::depth).max().unwrap_or(0) + 1;
        if depth > MAX_DEPTH {
            return Err(self.error(format!("containers nest more than {MAX_DEPTH} deep")));
        }
        Ok(depth)
    }

    fn tuple(&self, items: Vec<Value>) -> Result<Value, PickleError> {
        let depth = self.depth_of(&items)?;
        Ok(Value::Tuple(Rc::new(Items { items, depth })))
    }

    /// Counts the values a copy-on-write of a shared container copies.
    fn charge(&mut self, n: usize) -> Result<(), PickleError> {
        self.copied = self.copied.saturating_add(n);
        if self.copied > MAX_COPIED {
            return Err(self.error(format!("extending shared containers copies more than {MAX_COPIED} values")));
        }
        Ok(())
    }

    /// Appends `values` to the list on top of the stack.
    fn extend_list(&mut self, op: &str, values: Vec<Value>) -> Result<(), PickleError> {
        let depth = self.depth_of(&values)?;
        let floor = self.floor();
        let copy = match self.stack.last() {
            Some(Value::List(list)) if self.stack.len() > floor => {
                (Rc::strong_count(list) > 1).then(|| list.items.len())
            }
            Some(other) if self.stack.len() > floor => {
                return Err(self.error(format!("{op} to {}: only a list can be appended to", other.kind())))
            }
            _ => return Err(self.error(format!("{op} finds the stack empty"))),
        };
        self.charge(copy.unwrap_or(0))?;
        let Some(Value::List(list)) = self.stack.last_mut() else { unreachable!("checked above") };
        let list = Rc::make_mut(list);
        list.depth = list.depth.max(depth);
        list.items.extend(values);
        Ok(())
    }

    /// Sets `pairs` in the dict on top of the stack.
    fn set_items(&mut self, op: &str, pairs: Vec<(Value, Value)>) -> Result<(), PickleError> {
        let depth = self.depth_of(pairs.iter().flat_map(|(k, v)| [k, v]))?;
        let floor = self.floor();
        let copy = match self.stack.last() {
            Some(Value::Dict(dict)) if self.stack.len() > floor => {
                (Rc::strong_count(dict) > 1).then(|| dict.items.len())
            }
            Some(other) if self.stack.len() > floor => {
                return Err(self.error(format!("{op} on {}: only a dict can have items set", other.kind())))
            }
            _ => return Err(self.error(format!("{op} finds the stack empty"))),
        };
        self.charge(copy.unwrap_or(0))?;
        let Some(Value::Dict(dict)) = self.stack.last_mut() else { unreachable!("checked above") };
        let dict = Rc::make_mut(dict);
        dict.depth = dict.depth.max(depth);
        dict.items.extend(pairs);
        Ok(())
    }

    fn memo_put(&mut self, slot: u32) -> Result<(), PickleError> {
        let value = self.top("BINPUT")?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&slot) {
            return Err(self.error(format!("the memo holds more than {MAX_MEMO} values")));
        }
        self.memo.insert(slot, value);
        Ok(())
    }

    fn memo_get(&mut self, slot: u32) -> Result<(), PickleError> {
        let value = self
            .memo
            .get(&slot)
            .cloned()
            .ok_or_else(|| self.error(format!("memo slot {slot} is read but was never stored")))?;
        self.push(value)
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            self.op_at = self.pos;
            let op = self.byte("an opcode")?;
            match op {
                0x80 => {
                    let version = self.byte("PROTO's version")?;
                    if version > 5 {
                        return Err(self.error(format!("pickle protocol {version} is unknown")));
                    }
                }
                b'.' => return self.pop("STOP"),
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.error(format!("more than {MAX_MARKS} MARKs are open")));
                    }
                    self.marks.push(self.stack.len());
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool)?,
                0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let n = self.u32("BININT")? as i32;
                    self.push(Value::Int(n.into()))?
                }
                b'K' => {
                    let n = self.byte("BININT1")?;
                    self.push(Value::Int(n.into()))?
                }
                b'M' => {
                    let b = self.take(2, "BININT2")?;
                    let n = u16::from_le_bytes([b[0], b[1]]);
                    self.push(Value::Int(n.into()))?
                }
                0x8a => {
                    let n = usize::from(self.byte("LONG1's length")?);
                    if n > 8 {
                        return Err(self.error(format!("LONG1 of {n} bytes: larger than 64 bits")));
                    }
                    let b = self.take(n, "LONG1")?;
                    // Two's complement, little-endian, sign-extended from the last byte.
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 };
                    let mut full = [fill; 8];
                    full[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(full)))?
                }
                b'G' => {
                    self.take(8, "BINFLOAT")?;
                    self.push(Value::Float)?
                }
                b'X' | b'U' => {
                    let (name, n) = if op == b'X' {
                        ("BINUNICODE", self.u32("BINUNICODE's length")? as usize)
                    } else {
                        ("SHORT_BINSTRING", usize::from(self.byte("SHORT_BINSTRING's length")?))
                    };
                    let b = self.take(n, name)?;
                    let s: Option<Rc<str>> = std::str::from_utf8(b).ok().map(Into::into);
                    let s = s.ok_or_else(|| self.error(format!("{name} is not UTF-8")))?;
                    self.push(Value::Str(s))?
                }
                b')' => self.push(self.tuple(Vec::new())?)?,
                b']' => self.push(Value::List(Rc::new(Items { items: Vec::new(), depth: 1 })))?,
                b'}' => self.push(Value::Dict(Rc::new(Items { items: Vec::new(), depth: 1 })))?,
                b't' => {
                    let items = self.pop_mark("TUPLE")?;
                    self.push(self.tuple(items)?)?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let name = opcode_name(op).expect("TUPLE1..3");
                    if self.stack.len() < self.floor() + n {
                        return Err(self.error(format!("{name} needs {n} values on the stack")));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(self.tuple(items)?)?
                }
                b'a' => {
                    let value = self.pop("APPEND")?;
                    self.extend_list("APPEND", vec![value])?
                }
                b'e' => {
                    let values = self.pop_mark("APPENDS")?;
                    self.extend_list("APPENDS", values)?
                }
                b's' => {
                    let value = self.pop("SETITEM")?;
                    let key = self.pop("SETITEM")?;
                    self.set_items("SETITEM", vec![(key, value)])?
                }
                b'u' => {
                    let values = self.pop_mark("SETITEMS")?;
                    if values.len() % 2 != 0 {
                        return Err(self.error(format!("SETITEMS of {} values: not key, value pairs", values.len())));
                    }
                    let mut pairs = Vec::with_capacity(values.len() / 2);
                    let mut values = values.into_iter();
                    while let (Some(k), Some(v)) = (values.next(), values.next()) {
                        pairs.push((k, v));
                    }
                    self.set_items("SETITEMS", pairs)?
                }
                b'q' => {
                    let slot = self.byte("BINPUT")?;
                    self.memo_put(slot.into())?
                }
                b'r' => {
                    let slot = self.u32("LONG_BINPUT")?;
                    self.memo_put(slot)?
                }
                b'h' => {
                    let slot = self.byte("BINGET")?;
                    self.memo_get(slot.into())?
                }
                b'j' => {
                    let slot = self.u32("LONG_BINGET")?;
                    self.memo_get(slot)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = lookup_global(&module, &name).ok_or_else(|| {
                        self.error(format!(
                            "GLOBAL `{module}.{name}` is refused: a state dict needs only \
                             collections.OrderedDict, torch._utils._rebuild_* and torch's storage and dtype names"
                        ))
                    })?;
                    self.push(Value::Global(global))?
                }
                b'Q' => {
                    let pid = self.pop("BINPERSID")?;
                    let storage = self.persistent(pid)?;
                    self.push(Value::Storage(Rc::new(storage)))?
                }
                b'R' => {
                    let args = self.pop("REDUCE")?;
                    let callable = self.pop("REDUCE")?;
                    let result = self.reduce(callable, args)?;
                    self.push(result)?
                }
                b'b' => {
                    let state = self.pop("BUILD")?;
                    match self.top("BUILD")? {
                        Value::Dict(_) if matches!(state, Value::Dict(_) | Value::None) => {}
                        Value::Dict(_) => {
                            return Err(self.error(format!(
                                "BUILD of a dict with {}: only a dict of attributes is allowed",
                                state.kind()
                            )))
                        }
                        other => {
                            let kind = other.kind();
                            return Err(self.error(format!(
                                "BUILD on {kind} is refused: only an OrderedDict's attributes may be set"
                            )));
                        }
                    }
                }
                other => {
                    return Err(self.error(match opcode_name(other) {
                        Some(name) => format!(
                            "opcode {name} (0x{other:02x}) is refused: it is not one torch.save writes for a state dict"
                        ),
                        None => format!("byte 0x{other:02x} is not a pickle opcode"),
                    }))
                }
            }
        }
    }

    /// `BINPERSID`'s id: `('storage', storage class, key, location, numel)`.
    fn persistent(&self, pid: Value) -> Result<Storage, PickleError> {
        let bad = |detail: String| self.error(format!("persistent id {detail}"));
        let Value::Tuple(t) = &pid else {
            return Err(bad(format!("is {}, not ('storage', type, key, location, numel)", pid.kind())));
        };
        let [tag, class, key, location, numel] = t.items.as_slice() else {
            return Err(bad(format!("is {}, not ('storage', type, key, location, numel)", pid.kind())));
        };
        if !matches!(tag, Value::Str(s) if &**s == "storage") {
            return Err(bad(format!("starts with {}, not 'storage': only storages may be loaded", tag.kind())));
        }
        let elem = match class {
            Value::Global(Global::StorageClass(e)) => Some(*e),
            Value::Global(Global::UntypedStorage) => None,
            other => return Err(bad(format!("names {} as its storage type", other.kind()))),
        };
        let Value::Str(key) = key else { return Err(bad(format!("has {} as its key", key.kind()))) };
        if !matches!(location, Value::Str(_)) {
            return Err(bad(format!("has {} as its location", location.kind())));
        }
        let numel = match numel {
            Value::Int(n) => u64::try_from(*n).map_err(|_| bad(format!("gives a negative size, {n}")))?,
            other => return Err(bad(format!("gives {} as its size", other.kind()))),
        };
        Ok(Storage { key: key.to_string(), elem, numel })
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(global) = callable else {
            return Err(self.error(format!("REDUCE calls {}: only the allowed globals may be called", callable.kind())));
        };
        let name = global_name(&global);
        let Value::Tuple(args) = args else {
            return Err(self.error(format!("REDUCE of {name} with {} as its arguments", args.kind())));
        };
        let args = args.items.as_slice();
        let bad = |detail: String| self.error(format!("{name}: {detail}"));
        match global {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(bad(format!(
                        "called with {} argument(s); a state dict calls it with none",
                        args.len()
                    )));
                }
                Ok(Value::Dict(Rc::new(Items { items: Vec::new(), depth: 1 })))
            }
            Global::RebuildTensor(version) => {
                let count_ok = match version {
                    1 => args.len() == 4,
                    2 => args.len() == 6 || args.len() == 7,
                    _ => args.len() == 7 || args.len() == 8,
                };
                if !count_ok {
                    return Err(bad(format!("called with {} arguments", args.len())));
                }
                let Value::Storage(storage) = &args[0] else {
                    return Err(bad(format!("its storage is {}", args[0].kind())));
                };
                let elem = if version == 3 {
                    let Value::Global(Global::Dtype(e)) = &args[6] else {
                        return Err(bad(format!("its dtype is {}", args[6].kind())));
                    };
                    if storage.elem.is_some_and(|s| s != *e) {
                        return Err(bad(format!("a storage of one dtype viewed as {}", e.name)));
                    }
                    *e
                } else {
                    storage.elem.ok_or_else(|| bad("an untyped storage needs a dtype (_rebuild_tensor_v3)".into()))?
                };
                let offset = match &args[1] {
                    Value::Int(n) => u64::try_from(*n).map_err(|_| bad(format!("storage offset {n} is negative")))?,
                    other => return Err(bad(format!("its storage offset is {}", other.kind()))),
                };
                let shape = self.sizes(&name, "size", &args[2])?;
                let strides = self.sizes(&name, "stride", &args[3])?;
                if shape.len() != strides.len() {
                    return Err(bad(format!("size {shape:?} and stride {strides:?} differ in length")));
                }
                if version != 1 {
                    if !matches!(args[4], Value::Bool) {
                        return Err(bad(format!("its requires_grad is {}", args[4].kind())));
                    }
                    match &args[5] {
                        Value::Dict(d) if d.items.is_empty() => {}
                        other => {
                            return Err(bad(format!("its backward hooks are {}, not an empty dict", other.kind())))
                        }
                    }
                }
                // Elements of the storage: an untyped one counts bytes.
                let elements = if storage.elem.is_some() { storage.numel } else { storage.numel / elem.size as u64 };
                let end = super::view_span(&shape, &strides)
                    .and_then(|span| offset.checked_add(span as u64))
                    .filter(|&end| end <= elements);
                if end.is_none() {
                    return Err(bad(format!(
                        "the view (offset {offset}, size {shape:?}, stride {strides:?}) reaches past the end of storage \
                         `{}` ({elements} elements of {})",
                        storage.key, elem.name
                    )));
                }
                Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), elem, offset, shape, strides })))
            }
            Global::RebuildParameter { with_state } => {
                if args.len() != if with_state { 4 } else { 3 } {
                    return Err(bad(format!("called with {} arguments", args.len())));
                }
                if !matches!(args[0], Value::Tensor(_)) {
                    return Err(bad(format!("its data is {}", args[0].kind())));
                }
                if !matches!(args[1], Value::Bool) {
                    return Err(bad(format!("its requires_grad is {}", args[1].kind())));
                }
                match &args[2] {
                    Value::Dict(d) if d.items.is_empty() => {}
                    other => return Err(bad(format!("its backward hooks are {}, not an empty dict", other.kind()))),
                }
                Ok(args[0].clone())
            }
            Global::StorageClass(_) | Global::UntypedStorage | Global::Dtype(_) => {
                Err(bad("is a type name, not a function: calling it is refused".into()))
            }
        }
    }

    /// A tuple of non-negative ints (a size or a stride).
    fn sizes(&self, name: &str, what: &str, value: &Value) -> Result<Vec<usize>, PickleError> {
        let err = || self.error(format!("{name}: its {what} is {}, not a tuple of non-negative ints", value.kind()));
        let Value::Tuple(t) = value else { return Err(err()) };
        t.items
            .iter()
            .map(|v| match v {
                Value::Int(n) => usize::try_from(*n).map_err(|_| err()),
                _ => Err(err()),
            })
            .collect()
    }
}
