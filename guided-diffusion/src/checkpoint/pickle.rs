//! A restricted unpickler for the subset of Python's pickle format that `torch.save` writes
//! for a state dict. It never imports or calls anything: `GLOBAL` yields a name, `REDUCE` and
//! `NEWOBJ` yield an inert "call" node that [`super::pt`] recognises (tensor rebuilds,
//! `OrderedDict`) or ignores.
//!
//! Why our own rather than candle's `pickle` module: that one panics on short argument tuples,
//! recurses without bound on nested tuples and deep-copies memo entries (a few hundred bytes
//! grow to gigabytes). Here, by construction:
//! - values are immutable trees shared through `Rc`, so a memo fetch costs one pointer;
//!   mutating a shared container (`SETITEMS` on a memoised dict) copies it once, and every
//!   object made or copied counts against [`MAX_PICKLE_WORK`](crate::limits::MAX_PICKLE_WORK)
//!   (time and memory are linear in the input);
//! - every container records its depth, capped at
//!   [`MAX_PICKLE_DEPTH`](crate::limits::MAX_PICKLE_DEPTH), so dropping or walking a value
//!   never overflows the stack, and no value can contain itself;
//! - every opcode checks its arguments and the stack; anything outside the subset (text-mode
//!   opcodes, `INST`, extensions, out-of-range lengths) is an error naming the byte offset.
//!
//! Supported: protocols 2-5 as `torch.save` writes them (`PROTO`, `FRAME`, `MARK`, `STOP`,
//! `POP`, `POP_MARK`, `DUP`, `NONE`, booleans, `BININT*`, `LONG1`, `LONG4` up to 8 bytes,
//! `BINFLOAT`, the `BINUNICODE*` and `BINBYTES*` strings, `GLOBAL`, `STACK_GLOBAL`, tuples, lists,
//! dicts, the memo opcodes, `REDUCE`, `NEWOBJ(_EX)`, `BUILD` and `BINPERSID`).
use std::collections::HashMap;
use std::rc::Rc;

use crate::limits::{MAX_PICKLE_DEPTH, MAX_PICKLE_WORK};

/// A pickled value. Containers are shared (`Rc`) and immutable once shared.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// `module.name` of a `GLOBAL` (never resolved).
    Global(Rc<(String, String)>),
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Map>),
    /// `callable(*args)` as `REDUCE` / `NEWOBJ` describe it; `BUILD` state is dropped.
    Call(Rc<Call>),
    /// `BINPERSID`: a persistent id (torch's storages).
    Persistent(Rc<Seq>),
}

/// Items of a tuple, list or persistent id; `depth` is 1 + the deepest item's.
#[derive(Debug, Clone)]
pub struct Seq {
    pub depth: u32,
    pub items: Vec<Value>,
}

/// Items of a dict in insertion order (duplicates kept; the last one wins when read).
#[derive(Debug, Clone)]
pub struct Map {
    pub depth: u32,
    pub items: Vec<(Value, Value)>,
}

impl Default for Seq {
    fn default() -> Self {
        Seq { depth: 1, items: Vec::new() }
    }
}

impl Default for Map {
    fn default() -> Self {
        Map { depth: 1, items: Vec::new() }
    }
}

#[derive(Debug, Clone)]
pub struct Call {
    pub depth: u32,
    pub callable: Value,
    pub args: Value,
}

impl Value {
    /// Nesting depth: 0 for scalars, 1 + the deepest child for containers.
    pub fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) | Value::Persistent(s) => s.depth,
            Value::Dict(m) => m.depth,
            Value::Call(c) => c.depth,
            _ => 0,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(s) | Value::List(s) => Some(&s.items),
            _ => None,
        }
    }

    /// `(module, name)` of a global.
    pub fn as_global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global(g) => Some((&g.0, &g.1)),
            _ => None,
        }
    }

    /// A short description for messages (no recursion into containers).
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("{b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => format!("str {:?}", truncate(s, 40)),
            Value::Bytes(b) => format!("bytes of length {}", b.len()),
            Value::Global(g) => format!("{}.{}", g.0, g.1),
            Value::Tuple(s) => format!("tuple of {}", s.items.len()),
            Value::List(s) => format!("list of {}", s.items.len()),
            Value::Dict(m) => format!("dict of {}", m.items.len()),
            Value::Call(c) => format!("call of {}", c.callable.kind()),
            Value::Persistent(_) => "persistent id".into(),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// Why a pickle was refused, with the byte offset of the opcode at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad pickle at byte {}: {}", self.offset, self.message)
    }
}

type PResult<T> = std::result::Result<T, String>;

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINUNICODE: u8 = b'X';
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

/// Longest module or class name a `GLOBAL` may carry.
const MAX_GLOBAL_LINE: usize = 1024;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each `MARK` (CPython's metastack).
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    work: u64,
}

/// Unpickles `data` (a whole `data.pkl`) into its top-level value.
pub fn unpickle(data: &[u8]) -> std::result::Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        work: 0,
    };
    loop {
        let at = m.pos;
        match m.step() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(message) => return Err(PickleError { offset: at, message }),
        }
    }
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> PResult<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            format!("truncated: {n} bytes needed, {} left", self.data.len() - self.pos)
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> PResult<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| "short read")?))
    }
    fn u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "short read")?))
    }
    fn u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "short read")?))
    }
    /// A length argument that must fit in what is left of the input.
    fn len_arg(&mut self, n: u64) -> PResult<usize> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(format!("length {n} runs past the end of the pickle ({left} bytes left)"));
        }
        Ok(n as usize)
    }
    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .take(MAX_GLOBAL_LINE + 1)
            .position(|&b| b == b'\n')
            .ok_or("GLOBAL name without a newline within 1024 bytes")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(s.to_string())
    }

    /// Counts `n` objects made or copied against the work limit.
    fn charge(&mut self, n: usize) -> PResult<()> {
        self.work = self.work.saturating_add(n as u64 + 1);
        if self.work > MAX_PICKLE_WORK {
            return Err(format!(
                "the pickle makes more than {MAX_PICKLE_WORK} objects (a memo or copy bomb?)"
            ));
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> PResult<()> {
        self.charge(0)?;
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self) -> PResult<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }
    fn top(&mut self) -> PResult<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("stack underflow".into());
        }
        self.stack.last_mut().ok_or_else(|| "stack underflow".into())
    }
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let at = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(at))
    }

    fn depth_of(items: impl Iterator<Item = u32>) -> PResult<u32> {
        let d = items.max().unwrap_or(0) + 1;
        if d > MAX_PICKLE_DEPTH {
            return Err(format!("containers nested deeper than {MAX_PICKLE_DEPTH}"));
        }
        Ok(d)
    }
    fn seq(items: Vec<Value>) -> PResult<Rc<Seq>> {
        let depth = Self::depth_of(items.iter().map(Value::depth))?;
        Ok(Rc::new(Seq { depth, items }))
    }
    fn call(&mut self, callable: Value, args: Value) -> PResult<Value> {
        let depth = Self::depth_of([callable.depth(), args.depth()].into_iter())?;
        // `OrderedDict()` / `defaultdict()` with no items become plain dicts.
        if let (Some((m, n)), Some(a)) = (callable.as_global(), args.as_seq()) {
            if m == "collections" && (n == "OrderedDict" || n == "defaultdict") && a.len() <= 1 {
                return Ok(Value::Dict(Rc::new(Map { depth: 1, items: Vec::new() })));
            }
        }
        Ok(Value::Call(Rc::new(Call { depth, callable, args })))
    }

    /// Adds `items` to the list on top of the stack (a copy first if it is shared).
    fn extend_list(&mut self, items: Vec<Value>) -> PResult<()> {
        let n = items.len();
        let add = Self::depth_of(items.iter().map(Value::depth))?;
        let copied = match self.top()? {
            Value::List(l) => {
                let copied = if Rc::strong_count(l) > 1 { l.items.len() } else { 0 };
                let l = Rc::make_mut(l);
                l.depth = l.depth.max(add);
                l.items.extend(items);
                copied
            }
            other => return Err(format!("APPEND(S) to a {}, expected a list", other.kind())),
        };
        self.charge(n + copied)
    }

    /// Adds `pairs` (key, value, key, value, ...) to the dict on top of the stack.
    fn extend_dict(&mut self, flat: Vec<Value>) -> PResult<()> {
        if !flat.len().is_multiple_of(2) {
            return Err(format!(
                "SETITEM(S) with an odd number ({}) of keys and values",
                flat.len()
            ));
        }
        let n = flat.len();
        let add = Self::depth_of(flat.iter().map(Value::depth))?;
        let copied = match self.top()? {
            Value::Dict(d) => {
                let copied = if Rc::strong_count(d) > 1 { d.items.len() } else { 0 };
                let d = Rc::make_mut(d);
                d.depth = d.depth.max(add);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.items.push((k, v));
                }
                copied
            }
            other => return Err(format!("SETITEM(S) on a {}, expected a dict", other.kind())),
        };
        self.charge(n + copied)
    }

    fn memo_put(&mut self, id: u32) -> PResult<()> {
        let v = self.top()?.clone();
        self.charge(0)?;
        self.memo.insert(id, v);
        Ok(())
    }
    fn memo_get(&mut self, id: u32) -> PResult<()> {
        let v = self.memo.get(&id).cloned().ok_or_else(|| format!("memo entry {id} is unset"))?;
        self.push(v)
    }

    fn str_of(&mut self, n: usize) -> PResult<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "string is not valid UTF-8".to_string())?;
        let v = Value::Str(Rc::from(s));
        self.push(v).map(|_| Value::None)
    }

    /// Runs one opcode; `Some(value)` at `STOP`.
    fn step(&mut self) -> PResult<Option<Value>> {
        let code = self.u8().map_err(|_| "ended without STOP".to_string())?;
        match code {
            op::PROTO => {
                let v = self.u8()?;
                if !(2..=5).contains(&v) {
                    return Err(format!("pickle protocol {v} (torch.save writes 2 to 5)"));
                }
            }
            op::FRAME => {
                self.u64()?;
            }
            op::STOP => {
                if !self.marks.is_empty() {
                    return Err("STOP inside an unclosed MARK".into());
                }
                let v = self.pop()?;
                if !self.stack.is_empty() {
                    return Err(format!("STOP with {} values left on the stack", self.stack.len()));
                }
                return Ok(Some(v));
            }
            op::MARK => {
                if self.marks.len() as u32 >= MAX_PICKLE_DEPTH {
                    return Err(format!("MARKs nested deeper than {MAX_PICKLE_DEPTH}"));
                }
                self.charge(0)?;
                self.marks.push(self.stack.len());
            }
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let v = self.top()?.clone();
                self.push(v)?;
            }
            op::NONE => self.push(Value::None)?,
            op::NEWTRUE => self.push(Value::Bool(true))?,
            op::NEWFALSE => self.push(Value::Bool(false))?,
            op::BININT => {
                let v = self.u32()? as i32;
                self.push(Value::Int(v as i64))?
            }
            op::BININT1 => {
                let v = self.u8()?;
                self.push(Value::Int(v as i64))?
            }
            op::BININT2 => {
                let v = self.u16()?;
                self.push(Value::Int(v as i64))?
            }
            op::LONG1 | op::LONG4 => {
                let n = if code == op::LONG1 { self.u8()? as u64 } else { self.u32()? as u64 };
                let n = self.len_arg(n)?;
                if n > 8 {
                    return Err(format!("integer of {n} bytes (at most 8 supported)"));
                }
                let b = self.take(n)?;
                let mut buf =
                    if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                buf[..n].copy_from_slice(b);
                self.push(Value::Int(i64::from_le_bytes(buf)))?
            }
            op::BINFLOAT => {
                let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "short read")?;
                self.push(Value::Float(f64::from_be_bytes(b)))?
            }
            op::BINUNICODE => {
                let n = self.u32()? as u64;
                let n = self.len_arg(n)?;
                self.str_of(n)?;
            }
            op::SHORT_BINUNICODE => {
                let n = self.u8()? as u64;
                let n = self.len_arg(n)?;
                self.str_of(n)?;
            }
            op::BINUNICODE8 => {
                let n = self.u64()?;
                let n = self.len_arg(n)?;
                self.str_of(n)?;
            }
            op::BINBYTES | op::SHORT_BINBYTES | op::BINBYTES8 => {
                let n = match code {
                    op::BINBYTES => self.u32()? as u64,
                    op::SHORT_BINBYTES => self.u8()? as u64,
                    _ => self.u64()?,
                };
                let n = self.len_arg(n)?;
                let b = Rc::from(self.take(n)?);
                self.push(Value::Bytes(b))?
            }
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(Rc::new((module, name))))?
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module.as_str(), name.as_str()) {
                    (Some(m), Some(n)) => {
                        let g = Value::Global(Rc::new((m.to_string(), n.to_string())));
                        self.push(g)?
                    }
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            op::EMPTY_TUPLE => self.push(Value::Tuple(Rc::new(Seq::default())))?,
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.charge(items.len())?;
                let t = Value::Tuple(Self::seq(items)?);
                self.push(t)?
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (code - op::TUPLE1 + 1) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                let t = Value::Tuple(Self::seq(items)?);
                self.push(t)?
            }
            op::EMPTY_LIST => self.push(Value::List(Rc::new(Seq::default())))?,
            op::LIST => {
                let items = self.pop_mark()?;
                self.charge(items.len())?;
                let l = Value::List(Self::seq(items)?);
                self.push(l)?
            }
            op::APPEND => {
                let v = self.pop()?;
                self.extend_list(vec![v])?
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.extend_list(items)?
            }
            op::EMPTY_DICT => self.push(Value::Dict(Rc::new(Map::default())))?,
            op::DICT => {
                let flat = self.pop_mark()?;
                self.push(Value::Dict(Rc::new(Map::default())))?;
                self.extend_dict(flat)?
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![k, v])?
            }
            op::SETITEMS => {
                let flat = self.pop_mark()?;
                self.extend_dict(flat)?
            }
            op::BINPUT => {
                let id = self.u8()? as u32;
                self.memo_put(id)?
            }
            op::LONG_BINPUT => {
                let id = self.u32()?;
                self.memo_put(id)?
            }
            op::MEMOIZE => {
                let id = self.memo.len() as u32;
                self.memo_put(id)?
            }
            op::BINGET => {
                let id = self.u8()? as u32;
                self.memo_get(id)?
            }
            op::LONG_BINGET => {
                let id = self.u32()?;
                self.memo_get(id)?
            }
            op::REDUCE | op::NEWOBJ => {
                let args = self.pop()?;
                let callable = self.pop()?;
                if args.as_seq().is_none() {
                    return Err(format!(
                        "REDUCE/NEWOBJ arguments are a {}, not a tuple",
                        args.kind()
                    ));
                }
                let v = self.call(callable, args)?;
                self.push(v)?
            }
            op::NEWOBJ_EX => {
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(callable, args)?;
                self.push(v)?
            }
            op::BUILD => {
                // The state sets attributes (an OrderedDict's `_metadata`); tensors and dicts
                // are what they are without it.
                let _state = self.pop()?;
                self.top()?;
            }
            op::BINPERSID => {
                let id = self.pop()?;
                match id {
                    Value::Tuple(s) => self.push(Value::Persistent(s))?,
                    other => {
                        return Err(format!("persistent id is a {}, not a tuple", other.kind()))
                    }
                }
            }
            other => {
                let shown = if other.is_ascii_graphic() {
                    format!("0x{other:02x} ({:?})", other as char)
                } else {
                    format!("0x{other:02x}")
                };
                return Err(format!(
                    "opcode {shown} is outside the subset torch.save writes for a state dict"
                ));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(data: &[u8]) -> String {
        unpickle(data).unwrap_err().to_string()
    }

    #[test]
    fn basics() {
        // {'a': (1, 'x')}
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00x\x86s.";
        let v = unpickle(p).unwrap();
        let Value::Dict(d) = v else { panic!() };
        assert_eq!(d.items.len(), 1);
        assert_eq!(d.items[0].0.as_str(), Some("a"));
        assert_eq!(d.items[0].1.as_seq().unwrap()[0].as_int(), Some(1));
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(err(b"").contains("without STOP"));
        assert!(err(b"\x80\x02R.").contains("underflow"));
        assert!(err(b"\x80\x02(R.").contains("underflow"));
        assert!(err(b"\x80\x02h\x05.").contains("memo entry 5"));
        assert!(err(b"\x80\x02X\xff\xff\xff\xff").contains("past the end"));
        assert!(err(b"\x80\x02i").contains("outside the subset"));
        assert!(err(b"\x80\x02K\x01K\x02.").contains("left on the stack"));
        assert!(err(b"\x80\x02K\x01s.").contains("underflow"));
        assert!(err(b"\x80\x02K\x01K\x01u.").contains("no MARK"));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut p = b"\x80\x02".to_vec();
        p.push(b')');
        p.extend(std::iter::repeat_n(0x85u8, 100_000)); // TUPLE1 100k times
        p.push(b'.');
        assert!(err(&p).contains("nested deeper"));
    }

    #[test]
    fn memo_bomb_is_cheap_and_copy_bomb_is_bounded() {
        // m = []; 64 times: m = (m, m). 2^64 leaves, 64 small tuples thanks to sharing.
        let mut p = b"\x80\x02]q\x000".to_vec();
        for _ in 0..64 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x000");
        }
        p.extend_from_slice(b"h\x00.");
        assert_eq!(unpickle(&p).unwrap().depth(), 65);
        // d = {}; then 100k times: SETITEM on the memoised (shared) d copies it each time.
        let mut p = b"\x80\x02}q\x000".to_vec();
        for i in 0..100_000u32 {
            p.extend_from_slice(b"h\x00J");
            p.extend_from_slice(&i.to_le_bytes());
            p.extend_from_slice(b"K\x00sq\x000");
        }
        p.extend_from_slice(b"h\x00.");
        assert!(err(&p).contains("more than"));
    }
}
