//! A small renderer for the subset of Helm's Go templates that
//! contrib/helm/acmeproxy uses, so the chart is rendered and checked without a
//! `helm` binary (Debian packages none). What it understands, and nothing more:
//!
//! - text and `{{ … }}` actions, with `{{-` / `-}}` whitespace trimming and
//!   `{{/* comments */}}`;
//! - `define "name"` … `end`, `if` / `else if` / `else` / `end`;
//! - pipelines of commands joined by `|`; a piped value is the last argument;
//! - arguments: `.` (always the root context), `.A.b.c` fields, `"strings"`,
//!   integers, `( … )` sub-pipelines;
//! - `.Files.Get "path"` (the context's `Files`: path → text);
//! - functions: `include`, `printf` (`%s` only), `default`, `quote`,
//!   `nindent`, `indent`, `toYaml`, `toJson`, `toPrettyJson`, `trunc`, `trimSuffix`,
//!   `contains`, `not`, `eq`, `and`, `or`, `gt`, `int`, `dict`, `merge`
//!   (sprig's: deep, the first map's values win) and `fail` (the render
//!   fails with its message, as `helm install` does).
//!
//! Stricter than Helm on purpose: printing a missing value, a map or a list
//! (without `toYaml`/`toPrettyJson`) is an error, so typos in a template fail
//! the test instead of rendering an empty string. `gt` compares integers
//! only: Helm reads numbers in values as float64, and Go's `gt` refuses a
//! float against an int literal, so templates write `gt (int .Values.x) 1`.

use std::collections::BTreeMap;

use serde_json::Value;

/// A parsed template: its top-level nodes and the `define`s it holds.
#[derive(Debug, Default)]
pub(crate) struct Templates {
    defines: BTreeMap<String, Vec<Node>>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Output(Pipeline),
    If {
        branches: Vec<(Pipeline, Vec<Self>)>,
        otherwise: Vec<Self>,
    },
}

type Pipeline = Vec<Vec<Arg>>;

#[derive(Debug, Clone)]
enum Arg {
    Dot,
    Field(Vec<String>),
    Func(String),
    Int(i64),
    Paren(Pipeline),
    Str(String),
}

/// One lexed piece: text, or an action's inside.
#[derive(Debug)]
enum Piece {
    Text(String),
    Action(String),
}

impl Templates {
    /// Adds the `define`s of a helpers file (its top-level text is dropped).
    pub(crate) fn add_helpers(&mut self, src: &str) -> Result<(), String> {
        parse_into(self, src).map(drop)
    }

    /// Renders one template against `ctx` (`{"Values":…, "Release":…, "Chart":…}`).
    pub(crate) fn render(&mut self, src: &str, ctx: &Value) -> Result<String, String> {
        let nodes = parse_into(self, src)?;
        let mut out = String::new();
        self.exec(&nodes, ctx, &mut out)?;
        Ok(out)
    }

    fn exec(&self, nodes: &[Node], ctx: &Value, out: &mut String) -> Result<(), String> {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Output(p) => out.push_str(&printable(&self.eval(p, ctx)?)?),
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mut taken = false;
                    for (cond, body) in branches {
                        if truthy(&self.eval(cond, ctx)?) {
                            self.exec(body, ctx, out)?;
                            taken = true;
                            break;
                        }
                    }
                    if !taken {
                        self.exec(otherwise, ctx, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn eval(&self, pipeline: &Pipeline, ctx: &Value) -> Result<Value, String> {
        let mut piped: Option<Value> = None;
        for cmd in pipeline {
            let (first, rest) = cmd.split_first().ok_or("empty command")?;
            let value = match first {
                Arg::Func(name) => {
                    let mut args = rest
                        .iter()
                        .map(|a| self.arg(a, ctx))
                        .collect::<Result<Vec<_>, _>>()?;
                    args.extend(piped.take());
                    self.call(name, &args)?
                }
                Arg::Field(path) if path == &["Files", "Get"] => {
                    let mut args = rest
                        .iter()
                        .map(|a| self.arg(a, ctx))
                        .collect::<Result<Vec<_>, _>>()?;
                    args.extend(piped.take());
                    files_get(ctx, &args)?
                }
                other => {
                    if !rest.is_empty() || piped.is_some() {
                        return Err(format!("{other:?} is not a function"));
                    }
                    self.arg(other, ctx)?
                }
            };
            piped = Some(value);
        }
        piped.ok_or_else(|| "empty pipeline".to_owned())
    }

    fn arg(&self, arg: &Arg, ctx: &Value) -> Result<Value, String> {
        Ok(match arg {
            Arg::Dot => ctx.clone(),
            Arg::Field(path) => path
                .iter()
                .try_fold(ctx, |v, k| v.get(k))
                .cloned()
                .unwrap_or(Value::Null),
            Arg::Func(name) => self.call(name, &[])?,
            Arg::Int(i) => Value::from(*i),
            Arg::Paren(p) => self.eval(p, ctx)?,
            Arg::Str(s) => Value::String(s.clone()),
        })
    }

    fn call(&self, name: &str, args: &[Value]) -> Result<Value, String> {
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("{name} takes {n} arguments, got {}", args.len()))
            }
        };
        let int = |v: &Value| {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("{name}: {v} is not a count"))
        };
        Ok(match name {
            "include" => {
                arity(2)?;
                let def = args[0].as_str().ok_or("include needs a name")?;
                let nodes = self
                    .defines
                    .get(def)
                    .ok_or_else(|| format!("no template {def:?}"))?;
                let mut out = String::new();
                self.exec(nodes, &args[1], &mut out)?;
                Value::String(out)
            }
            "printf" => {
                let (fmt, rest) = args.split_first().ok_or("printf needs a format")?;
                let mut parts = fmt.as_str().ok_or("printf format")?.split("%s");
                let mut out = parts.next().unwrap_or_default().to_owned();
                let mut rest = rest.iter();
                for part in parts {
                    out.push_str(&printable(rest.next().ok_or("printf: too few arguments")?)?);
                    out.push_str(part);
                }
                Value::String(out)
            }
            "default" => {
                arity(2)?;
                if truthy(&args[1]) {
                    args[1].clone()
                } else {
                    args[0].clone()
                }
            }
            "quote" => {
                arity(1)?;
                Value::String(
                    serde_json::to_string(&printable(&args[0])?).map_err(|e| e.to_string())?,
                )
            }
            "nindent" | "indent" => {
                arity(2)?;
                let pad = " ".repeat(int(&args[0])?);
                let s = printable(&args[1])?;
                let body = s
                    .split('\n')
                    .map(|l| format!("{pad}{l}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                Value::String(if name == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                })
            }
            "toYaml" => {
                arity(1)?;
                let y = serde_norway::to_string(&args[0]).map_err(|e| e.to_string())?;
                Value::String(y.trim_end_matches('\n').to_owned())
            }
            "toJson" => {
                arity(1)?;
                Value::String(serde_json::to_string(&args[0]).map_err(|e| e.to_string())?)
            }
            "toPrettyJson" => {
                arity(1)?;
                Value::String(serde_json::to_string_pretty(&args[0]).map_err(|e| e.to_string())?)
            }
            "trunc" => {
                arity(2)?;
                Value::String(printable(&args[1])?.chars().take(int(&args[0])?).collect())
            }
            "trimSuffix" => {
                arity(2)?;
                let (suffix, s) = (printable(&args[0])?, printable(&args[1])?);
                Value::String(s.strip_suffix(suffix.as_str()).unwrap_or(&s).to_owned())
            }
            "contains" => {
                arity(2)?;
                Value::Bool(printable(&args[1])?.contains(printable(&args[0])?.as_str()))
            }
            "not" => {
                arity(1)?;
                Value::Bool(!truthy(&args[0]))
            }
            "eq" => {
                arity(2)?;
                Value::Bool(args[0] == args[1])
            }
            // Go's `and`/`or` return the deciding argument, not a bool.
            "and" | "or" => {
                if args.len() < 2 {
                    return Err(format!("{name} takes 2 or more arguments"));
                }
                let stop = |v: &Value| truthy(v) == (name == "or");
                args.iter()
                    .find(|v| stop(v))
                    .unwrap_or(&args[args.len() - 1])
                    .clone()
            }
            "int" => {
                arity(1)?;
                match &args[0] {
                    Value::Number(n) if n.is_i64() => args[0].clone(),
                    Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                        Value::from(n.as_f64().unwrap_or_default() as i64)
                    }
                    Value::String(s) => Value::from(
                        s.parse::<i64>()
                            .map_err(|_| format!("int: {s:?} is not an integer"))?,
                    ),
                    other => return Err(format!("int: {other} is not an integer")),
                }
            }
            "gt" => {
                arity(2)?;
                let n = |v: &Value| {
                    v.as_i64()
                        .ok_or_else(|| format!("gt: {v} is not an integer (use int)"))
                };
                Value::Bool(n(&args[0])? > n(&args[1])?)
            }
            "dict" => {
                if args.len() % 2 != 0 {
                    return Err("dict takes key/value pairs".to_owned());
                }
                let mut map = serde_json::Map::new();
                for pair in args.chunks(2) {
                    let key = pair[0].as_str().ok_or("dict: a key is not a string")?;
                    map.insert(key.to_owned(), pair[1].clone());
                }
                Value::Object(map)
            }
            "merge" => {
                let (dst, srcs) = args.split_first().ok_or("merge needs maps")?;
                let mut out = dst.clone();
                for src in srcs {
                    merge_under(&mut out, src)?;
                }
                out
            }
            "fail" => {
                arity(1)?;
                return Err(format!("execution error: {}", printable(&args[0])?));
            }
            other => return Err(format!("unknown function {other:?}")),
        })
    }
}

/// sprig's `merge`: keys of `src` missing from `dst` are added, maps merged
/// recursively, and every value `dst` already has is kept.
fn merge_under(dst: &mut Value, src: &Value) -> Result<(), String> {
    let (Value::Object(d), Value::Object(s)) = (dst, src) else {
        return Err("merge takes maps".to_owned());
    };
    for (k, v) in s {
        match d.get_mut(k) {
            None => {
                d.insert(k.clone(), v.clone());
            }
            Some(dv @ Value::Object(_)) if v.is_object() => merge_under(dv, v)?,
            Some(_) => {}
        }
    }
    Ok(())
}

/// `.Files.Get "path"`: the chart file at `path` (the context's `Files`
/// map, path → text). A missing file is an error (Helm gives "").
fn files_get(ctx: &Value, args: &[Value]) -> Result<Value, String> {
    let [Value::String(path)] = args else {
        return Err(format!(".Files.Get takes one path, got {args:?}"));
    };
    ctx["Files"]
        .get(path)
        .cloned()
        .ok_or_else(|| format!(".Files.Get: no file {path:?} in the chart"))
}

/// Go template truth: false, 0, "", null and empty collections are false.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn printable(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Err("printing a missing value".to_owned()),
        other => Err(format!("printing a collection without toYaml: {other}")),
    }
}

/// Splits a template into text and actions, applying `{{-`/`-}}` trimming
/// and dropping comments.
fn lex(src: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let mut inner = &after[..end];
        if let Some(i) = inner.strip_prefix("- ") {
            text = text.trim_end();
            inner = i;
        }
        trim_next = false;
        if let Some(i) = inner.strip_suffix(" -") {
            trim_next = true;
            inner = i;
        }
        pieces.push(Piece::Text(text.to_owned()));
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            pieces.push(Piece::Action(inner.to_owned()));
        }
        rest = &after[end + 2..];
    }
    pieces.push(Piece::Text(if trim_next {
        rest.trim_start().to_owned()
    } else {
        rest.to_owned()
    }));
    Ok(pieces)
}

/// Splits an action into tokens: strings (kept quoted), `|`, `(`, `)`, words.
fn tokens(action: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '|' | '(' | ')' => {
                out.push(c.to_string());
                chars.next();
            }
            '"' => {
                chars.next();
                let mut s = String::from('"');
                loop {
                    match chars.next().ok_or("unclosed string")? {
                        '\\' => s.push(chars.next().ok_or("bad escape")?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                out.push(s);
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "|()\"".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(word);
            }
        }
    }
    Ok(out)
}

fn parse_pipeline(toks: &[String]) -> Result<Pipeline, String> {
    let mut pos = 0;
    let p = pipeline_at(toks, &mut pos)?;
    if pos != toks.len() {
        return Err(format!("unexpected {:?}", toks[pos]));
    }
    Ok(p)
}

fn pipeline_at(toks: &[String], pos: &mut usize) -> Result<Pipeline, String> {
    let mut pipeline = vec![Vec::new()];
    while let Some(t) = toks.get(*pos) {
        *pos += 1;
        let arg = match t.as_str() {
            ")" => {
                *pos -= 1;
                break;
            }
            "|" => {
                pipeline.push(Vec::new());
                continue;
            }
            "(" => {
                let inner = pipeline_at(toks, pos)?;
                if toks.get(*pos).map(String::as_str) != Some(")") {
                    return Err("unclosed (".to_owned());
                }
                *pos += 1;
                Arg::Paren(inner)
            }
            "." => Arg::Dot,
            s if s.starts_with('"') => Arg::Str(s[1..].to_owned()),
            s if s.starts_with('.') => Arg::Field(s[1..].split('.').map(str::to_owned).collect()),
            s if s.parse::<i64>().is_ok() => Arg::Int(s.parse().map_err(|_| "int")?),
            s => Arg::Func(s.to_owned()),
        };
        pipeline.last_mut().ok_or("pipeline")?.push(arg);
    }
    if pipeline.iter().any(Vec::is_empty) {
        return Err("empty command in pipeline".to_owned());
    }
    Ok(pipeline)
}

/// Parses `src`, storing its `define`s in `t`; returns the top-level nodes.
fn parse_into(t: &mut Templates, src: &str) -> Result<Vec<Node>, String> {
    let pieces = lex(src)?;
    let mut pos = 0;
    let (nodes, end) = block(t, &pieces, &mut pos)?;
    if end.is_some() {
        return Err(format!("unexpected {end:?} at top level"));
    }
    Ok(nodes)
}

/// Parses nodes until `end`/`else` (returned) or the end of input (None).
fn block(
    t: &mut Templates,
    pieces: &[Piece],
    pos: &mut usize,
) -> Result<(Vec<Node>, Option<Vec<String>>), String> {
    let mut nodes = Vec::new();
    while let Some(piece) = pieces.get(*pos) {
        *pos += 1;
        let action = match piece {
            Piece::Text(s) => {
                nodes.push(Node::Text(s.clone()));
                continue;
            }
            Piece::Action(a) => tokens(a)?,
        };
        match action.first().map(String::as_str) {
            Some("end" | "else") => return Ok((nodes, Some(action))),
            Some("define") => {
                let name = action
                    .get(1)
                    .and_then(|n| n.strip_prefix('"'))
                    .ok_or("define needs a name")?
                    .to_owned();
                let (body, end) = block(t, pieces, pos)?;
                if end.as_deref() != Some(&["end".to_owned()][..]) {
                    return Err(format!("define {name:?} is not closed by end"));
                }
                t.defines.insert(name, body);
            }
            Some("if") => {
                let mut branches = Vec::new();
                let mut cond = parse_pipeline(&action[1..])?;
                let otherwise = loop {
                    let (body, end) = block(t, pieces, pos)?;
                    branches.push((cond, body));
                    let end = end.ok_or("if is not closed by end")?;
                    match end.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                        ["end"] => break Vec::new(),
                        ["else"] => {
                            let (body, end) = block(t, pieces, pos)?;
                            if end.as_deref() != Some(&["end".to_owned()][..]) {
                                return Err("else is not closed by end".to_owned());
                            }
                            break body;
                        }
                        ["else", "if", ..] => cond = parse_pipeline(&end[2..])?,
                        _ => return Err(format!("unexpected {end:?}")),
                    }
                };
                nodes.push(Node::If {
                    branches,
                    otherwise,
                });
            }
            Some(_) => nodes.push(Node::Output(parse_pipeline(&action)?)),
            None => return Err("empty action".to_owned()),
        }
    }
    Ok((nodes, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renderer_basics() {
        let mut t = Templates::default();
        t.add_helpers(r#"{{- define "n" -}}{{ .Values.a | default "x" }}-{{ printf "%s/%s" "p" .Values.b }}{{- end -}}"#)
            .unwrap();
        let ctx = serde_json::json!({"Values": {"a": "", "b": 7, "m": {"k": [1, 2]}, "on": true}});
        let out = t
            .render(
                "n: {{ include \"n\" . | quote }}\n{{- if not .Values.on }}\nno\n{{- else if .Values.on }}\nyes: {{ (include \"n\" .) | trunc 3 }}\n{{- end }}\nm:\n  {{- .Values.m | toYaml | nindent 2 }}\n",
                &ctx,
            )
            .unwrap();
        assert_eq!(out, "n: \"x-p/7\"\nyes: x-p\nm:\n  k:\n  - 1\n  - 2\n");
        assert!(t.render("{{ .Values.missing }}", &ctx).is_err());
        assert!(t.render("{{ .Values.m }}", &ctx).is_err());
        assert!(t.render("{{ nosuch 1 }}", &ctx).is_err());

        // and/or/gt/int/dict/merge/fail.
        let out = t
            .render(
                "{{ and .Values.on .Values.b }} {{ or .Values.a \"y\" }} {{ gt (int .Values.b) 1 }} {{ gt (int \"1\") 1 }}\n{{- merge (dict \"m\" (dict \"j\" 3 \"k\" 0)) .Values | toJson | nindent 0 }}",
                &ctx,
            )
            .unwrap();
        assert_eq!(
            out,
            "7 y true false\n{\"a\":\"\",\"b\":7,\"m\":{\"j\":3,\"k\":0},\"on\":true}"
        );
        assert!(t.render("{{ gt .Values.a 1 }}", &ctx).is_err());
        assert!(
            t.render("{{ merge .Values.b .Values.m | toJson }}", &ctx)
                .is_err()
        );
        let e = t
            .render("a{{ if .Values.on }}{{ fail \"no way\" }}{{ end }}", &ctx)
            .unwrap_err();
        assert_eq!(e, "execution error: no way");

        // .Files.Get, piped on.
        let ctx = serde_json::json!({"Files": {"files/a.yml": "x: 1\ny: 2"}});
        let out = t
            .render("spec:\n{{ .Files.Get \"files/a.yml\" | indent 2 }}", &ctx)
            .unwrap();
        assert_eq!(out, "spec:\n  x: 1\n  y: 2");
        assert!(t.render("{{ .Files.Get \"files/b.yml\" }}", &ctx).is_err());
    }
}
