//! `cargo xtask cycles`: no source file of a crate imports a file that imports it back.
//!
//! Crates have no cycle between them (Cargo refuses one); inside a crate nothing stops
//! `runtime.rs` using `sandbox.rs` while `sandbox.rs` uses `runtime.rs`, and then neither can be
//! read, tested or moved alone. This check builds each crate's file-level graph and fails on a
//! cycle, naming the files and the paths that make each edge.
//!
//! An edge `a.rs → b.rs` is a path in `a.rs` that reaches an item of `b.rs`: a `use`, or a path
//! in code (`crate::x::f()`, `super::T`, `child::f()`). Paths through a re-export are followed
//! to the file that defines the item. Not edges: `mod` declarations, re-exports themselves
//! (`pub use`, `pub(crate) use`: what a module offers, not what it uses), comments and strings.
//! A child's tests (`#[cfg(test)] mod tests;` using `super::*`) are edges of the child only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// One source file: its module path, what it declares and what it uses.
#[derive(Debug, Default)]
struct File {
    module: Vec<String>,
    /// Child modules declared with `mod x;`.
    children: BTreeSet<String>,
    /// Items defined here (fn, struct, enum, trait, type, const, static, macro).
    defined: BTreeSet<String>,
    /// `use` imports: the name in scope → the path it names (absolute, from the crate root).
    imports: BTreeMap<String, Vec<String>>,
    /// `use x::*` targets (absolute).
    globs: Vec<Vec<String>>,
    /// Paths that are uses (not re-exports), absolute, with the text they came from.
    uses: Vec<(Vec<String>, String)>,
}

/// The cycles known when this check came, to be taken apart (`xtask/known-cycles.txt`: one
/// cycle a line, its files separated by spaces). A cycle found must lie within one of them; a
/// line that no cycle lies within any more must go, so the list only shrinks.
const KNOWN: &str = include_str!("../known-cycles.txt");

/// What is wrong, as lines of text: cycles that are not known, and known ones that are gone.
/// Empty when the graph is as good as the list says or better.
pub fn check(root: &Path) -> Result<Vec<String>, String> {
    let known: Vec<BTreeSet<&str>> = KNOWN
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let mut out = Vec::new();
    let mut still = vec![false; known.len()];
    for (files, lines) in all(root)? {
        let set: BTreeSet<&str> = files.iter().map(String::as_str).collect();
        match known.iter().position(|k| set.is_subset(k)) {
            Some(k) => {
                still[k] = true;
                eprintln!("known (to take apart): {}", lines[0]);
            }
            None => out.extend(lines),
        }
    }
    for (k, _) in known.iter().zip(&still).filter(|(_, s)| !**s) {
        out.push(format!(
            "no longer a cycle: remove this line from xtask/known-cycles.txt: {}",
            k.iter().copied().collect::<Vec<_>>().join(" ")
        ));
    }
    Ok(out)
}

/// A cycle: its files (relative to the root) and the lines that show it.
type Found = (Vec<String>, Vec<String>);

/// Every cycle of every crate under `root`: its files (relative to `root`) and lines of text
/// naming them and the paths that make each edge.
fn all(root: &Path) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    let mut roots = Vec::new();
    for dir in std::fs::read_dir(root.join("crates")).map_err(|e| e.to_string())? {
        let dir = dir.map_err(|e| e.to_string())?.path();
        for name in ["lib.rs", "main.rs"] {
            if dir.join("src").join(name).exists() {
                roots.push(dir.join("src").join(name));
            }
        }
    }
    roots.push(root.join("xtask/src/main.rs"));
    roots.sort();
    for crate_root in roots {
        let files = load(&crate_root)?;
        for cycle in cycles(&files) {
            let shown: Vec<String> = cycle
                .iter()
                .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
                .collect();
            let mut lines = vec![format!("cycle: {}", shown.join(" ↔ "))];
            for (from, to, via) in edges_within(&files, &cycle) {
                lines.push(format!(
                    "    {} → {} ({via})",
                    from.strip_prefix(root).unwrap_or(&from).display(),
                    to.strip_prefix(root).unwrap_or(&to).display()
                ));
            }
            found.push((shown, lines));
        }
    }
    Ok(found)
}

/// The crate's files from its root, following `mod x;` declarations.
fn load(crate_root: &Path) -> Result<BTreeMap<PathBuf, File>, String> {
    let mut files = BTreeMap::new();
    let mut todo = vec![(crate_root.to_path_buf(), Vec::<String>::new())];
    while let Some((path, module)) = todo.pop() {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let code = strip(&text);
        let file = parse(&code, module.clone());
        let dir = if path == crate_root || path.file_name().is_some_and(|n| n == "mod.rs") {
            path.parent().unwrap().to_path_buf()
        } else {
            path.with_extension("")
        };
        for child in &file.children {
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(child).join("mod.rs");
            let found = if flat.exists() { flat } else { nested };
            if found.exists() {
                let mut m = module.clone();
                m.push(child.clone());
                todo.push((found, m));
            }
        }
        files.insert(path, file);
    }
    Ok(files)
}

/// The code without comments, strings and character literals (each replaced by a space).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            b'r' if matches!(b.get(i + 1), Some(b'#') | Some(b'"')) && raw_start(b, i) => {
                let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    // A raw identifier (`r#type`): the identifier.
                    i += 1 + hashes;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                i += 2 + hashes;
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += 1;
                }
                i += close.len();
                out.push(' ');
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push(' ');
            }
            b'\'' => {
                // A character literal ('x', '\n', '\u{..}', '"'); a lifetime has no closing quote.
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..]
                        .iter()
                        .position(|c| *c == b'\'')
                        .map(|p| i + 2 + p)
                } else {
                    let len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 1 + len)
                };
                match end {
                    Some(end) => {
                        i = end + 1;
                        out.push(' ');
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                let len = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&text[i..i + len]);
                i += len;
            }
        }
    }
    out
}

/// Whether the `r` at `at` starts a raw string or identifier: nothing of an identifier before
/// it, or only a literal's prefix (`br"..."`, `cr"..."`).
fn raw_start(b: &[u8], at: usize) -> bool {
    let ident = |i: usize| b[i].is_ascii_alphanumeric() || b[i] == b'_';
    match at.checked_sub(1) {
        None => true,
        Some(p) if !ident(p) => true,
        Some(p) => matches!(b[p], b'b' | b'c') && (p == 0 || !ident(p - 1)),
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Tokens: identifiers, `::`, and single punctuation characters.
fn tokens(code: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
        } else if is_ident(c) {
            let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = &rest[end..];
        } else if rest.starts_with("::") {
            out.push("::");
            rest = &rest[2..];
        } else {
            out.push(&rest[..c.len_utf8()]);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Resolves `crate`, `self` and `super` at the head of `path`, seen from `module`; a path
/// with none of them starts at `module` when its head is a child module (the caller checks).
fn absolute(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Expands a `use` tree (`a::{b, c::d as e, f::*}`) into (path, name in scope) pairs; a glob
/// has the name `*`.
fn expand(tokens: &[&str], prefix: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    if tokens.is_empty() {
        // After a group's trailing comma (`use a::{b, c,};`): nothing.
        return;
    }
    let mut path = prefix;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i] {
            "::" => {}
            "{" => {
                let mut depth = 0;
                let mut start = i + 1;
                for j in i..tokens.len() {
                    match tokens[j] {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                expand(&tokens[start..j], path.clone(), out);
                                return;
                            }
                        }
                        "," if depth == 1 => {
                            expand(&tokens[start..j], path.clone(), out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            "*" => {
                out.push((path, "*".into()));
                return;
            }
            "as" => {
                if let Some(alias) = tokens.get(i + 1) {
                    out.push((path, alias.to_string()));
                }
                return;
            }
            t => path.push(t.to_string()),
        }
        i += 1;
    }
    if let Some(last) = path.last().cloned() {
        let name = if last == "self" {
            path.pop();
            path.last().cloned().unwrap_or_default()
        } else {
            last
        };
        out.push((path, name));
    }
}

fn parse(code: &str, module: Vec<String>) -> File {
    let t = tokens(code);
    let mut file = File {
        module,
        ..File::default()
    };
    // The inline modules (`mod tests { .. }`) each token is in: paths there start from them.
    let mut scope: Vec<Vec<String>> = Vec::with_capacity(t.len());
    let mut level: Vec<usize> = Vec::with_capacity(t.len());
    let mut item_depth: Vec<usize> = Vec::with_capacity(t.len());
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    for i in 0..t.len() {
        level.push(depth);
        item_depth.push(open.last().map_or(0, |(_, d)| d + 1));
        match t[i] {
            "{" => {
                if i >= 2 && t[i - 2] == "mod" {
                    open.push((t[i - 1].to_string(), depth));
                }
                depth += 1;
            }
            "}" => {
                depth -= 1;
                if open.last().is_some_and(|(_, d)| *d == depth) {
                    open.pop();
                }
            }
            _ => {}
        }
        scope.push(open.iter().map(|(name, _)| name.clone()).collect());
    }
    let mut in_use = vec![false; t.len()];
    for i in 0..t.len() {
        let prev = if i > 0 { t[i - 1] } else { ";" };
        let inline = !scope[i].is_empty();
        // At the level of items (not in a function, an impl or a type's generics).
        let item_level = level[i] == item_depth[i];
        match t[i] {
            "fn" | "struct" | "enum" | "trait" | "type" | "const" | "static" | "union"
                if !item_level || matches!(prev, "'" | "*" | "<" | ",") => {}
            "mod" if t.get(i + 2) == Some(&";") => {
                file.children.insert(t[i + 1].to_string());
            }
            "fn" | "struct" | "enum" | "trait" | "type" | "const" | "static" | "union" => {
                if let Some(name) = t.get(i + 1).filter(|n| n.starts_with(is_ident)) {
                    file.defined.insert(name.to_string());
                }
            }
            "macro_rules" => {
                if let Some(name) = t.get(i + 2) {
                    file.defined.insert(name.to_string());
                }
            }
            "use" if matches!(prev, ";" | "{" | "}" | "]" | ")" | "pub") => {
                let end = (i..t.len()).find(|&j| t[j] == ";").unwrap_or(t.len());
                // `pub use`, `pub(crate) use`, `pub(super) use`: a re-export.
                let export = prev == "pub" || (prev == ")" && i >= 4 && t[i - 4] == "pub");
                let mut pairs = Vec::new();
                expand(&t[i + 1..end], Vec::new(), &mut pairs);
                for (path, name) in pairs {
                    let Some(abs) = resolve_head(&file, &scope[i], &path) else {
                        continue;
                    };
                    if !export {
                        file.uses.push((abs.clone(), path.join("::")));
                    }
                    if inline || level[i] != 0 {
                        // Scoped to an inline module or a block: nothing else resolves through it.
                    } else if name == "*" {
                        file.globs.push(abs);
                    } else {
                        file.imports.insert(name, abs);
                    }
                }
                for flag in &mut in_use[i..end] {
                    *flag = true;
                }
            }
            _ => {}
        }
    }
    // Paths in code: `crate::..`, `super::..`, `self::..`, `child::..`.
    let mut i = 0;
    while i < t.len() {
        let head = t[i];
        let starts = !in_use[i]
            && (i == 0 || t[i - 1] != "::")
            && t.get(i + 1) == Some(&"::")
            && (matches!(head, "crate" | "super" | "self") || file.children.contains(head));
        if !starts {
            i += 1;
            continue;
        }
        let mut path = vec![head.to_string()];
        let mut j = i + 1;
        while t.get(j) == Some(&"::") && t.get(j + 1).is_some_and(|s| s.starts_with(is_ident)) {
            path.push(t[j + 1].to_string());
            j += 2;
        }
        if let Some(abs) = resolve_head(&file, &scope[i], &path) {
            file.uses.push((abs, path.join("::")));
        }
        i = j;
    }
    file
}

/// The absolute path of a path in `file` (inside its inline modules `inline`), or `None` for
/// an external crate's.
fn resolve_head(file: &File, inline: &[String], path: &[String]) -> Option<Vec<String>> {
    let module: Vec<String> = file.module.iter().chain(inline).cloned().collect();
    match path.first().map(String::as_str) {
        Some("crate" | "self" | "super") => absolute(&module, path),
        Some(head) if inline.is_empty() && file.children.contains(head) => absolute(&module, path),
        _ => None,
    }
}

/// The file that defines what `path` (absolute) names.
fn target(files: &BTreeMap<PathBuf, File>, path: &[String], depth: usize) -> Option<PathBuf> {
    let by_module: HashMap<&[String], &PathBuf> = files
        .iter()
        .map(|(p, f)| (f.module.as_slice(), p))
        .collect();
    let mut module: Vec<String> = Vec::new();
    for (n, seg) in path.iter().enumerate() {
        let Some(file) = by_module.get(module.as_slice()).map(|p| &files[*p]) else {
            // Inside an inline module: the file that holds it.
            module.pop();
            break;
        };
        if file.children.contains(seg) {
            module.push(seg.clone());
            continue;
        }
        if file.defined.contains(seg) || depth > 8 {
            break;
        }
        if let Some(imported) = file.imports.get(seg) {
            let mut next = imported.clone();
            next.extend(path[n + 1..].iter().cloned());
            return target(files, &next, depth + 1);
        }
        for glob in &file.globs {
            let mut next = glob.clone();
            next.extend(path[n..].iter().cloned());
            if let Some(t) = target(files, &next, depth + 1) {
                if files[&t].defined.contains(seg) || files[&t].module.last() == Some(seg) {
                    return Some(t);
                }
            }
        }
        break;
    }
    by_module.get(module.as_slice()).map(|p| (*p).clone())
}

/// Every edge of the crate: (from, to, the path that makes it).
fn edges(files: &BTreeMap<PathBuf, File>) -> Vec<(PathBuf, PathBuf, String)> {
    let mut out = BTreeSet::new();
    for (from, file) in files {
        for (path, via) in &file.uses {
            if let Some(to) = target(files, path, 0) {
                if &to != from {
                    out.insert((from.clone(), to, via.clone()));
                }
            }
        }
    }
    out.into_iter().collect()
}

fn edges_within(
    files: &BTreeMap<PathBuf, File>,
    cycle: &[PathBuf],
) -> Vec<(PathBuf, PathBuf, String)> {
    let mut seen = BTreeSet::new();
    edges(files)
        .into_iter()
        .filter(|(a, b, _)| cycle.contains(a) && cycle.contains(b))
        .filter(|(a, b, _)| seen.insert((a.clone(), b.clone())))
        .collect()
}

/// The strongly connected components with more than one file (Tarjan's algorithm).
fn cycles(files: &BTreeMap<PathBuf, File>) -> Vec<Vec<PathBuf>> {
    let nodes: Vec<&PathBuf> = files.keys().collect();
    let index_of: HashMap<&PathBuf, usize> =
        nodes.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let mut adj = vec![BTreeSet::new(); nodes.len()];
    for (a, b, _) in edges(files) {
        adj[index_of[&a]].insert(index_of[&b]);
    }
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(v: usize, adj: &[BTreeSet<usize>], s: &mut State) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &adj[v] {
            match s.index[w] {
                None => {
                    visit(w, adj, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let n = nodes.len();
    let mut s = State {
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &adj, &mut s);
        }
    }
    s.out
        .into_iter()
        .map(|scc| scc.into_iter().map(|i| nodes[i].clone()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crate_of(files: &[(&str, &str)]) -> BTreeMap<PathBuf, File> {
        // One directory per call: the tests run at once.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("xtask-cycles-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let loaded = load(&dir.join("lib.rs")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    fn names(cycles: Vec<Vec<PathBuf>>) -> Vec<Vec<String>> {
        cycles
            .into_iter()
            .map(|c| {
                c.iter()
                    .map(|p| p.file_name().unwrap().to_string_lossy().into())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_file_using_one_that_uses_it_back_is_a_cycle() {
        let files = crate_of(&[
            ("lib.rs", "mod a;\nmod b;\npub use a::A;\n"),
            ("a.rs", "use crate::b::B;\npub struct A;\n"),
            ("b.rs", "pub struct B;\nfn f() { let _ = super::a::A; }\n"),
        ]);
        assert_eq!(names(cycles(&files)), vec![vec!["a.rs", "b.rs"]]);
    }

    #[test]
    fn re_exports_tests_comments_and_strings_are_not_edges() {
        let files = crate_of(&[
            (
                "lib.rs",
                "mod a;\nmod b;\npub use a::A;\npub(crate) use b::B;\npub const C: u8 = 1;\n",
            ),
            ("a.rs", "use crate::B;\npub struct A;\n#[cfg(test)]\nmod tests;\n"),
            ("a/tests.rs", "use super::*;\nuse crate::a::A;\n"),
            (
                "b.rs",
                "// crate::a::A\n/// [`crate::a::A`]\npub struct B;\nconst S: &str = \"crate::a::A\";\nfn f() -> u8 { crate::C }\n",
            ),
        ]);
        assert!(cycles(&files).is_empty(), "{:?}", edges(&files));
        // What a re-export names is followed to the file that defines it.
        assert!(edges(&files)
            .iter()
            .any(|(a, b, _)| a.ends_with("a.rs") && b.ends_with("b.rs")));
    }

    #[test]
    fn trailing_commas_raw_strings_and_impl_items_add_nothing() {
        let files = crate_of(&[
            ("lib.rs", "mod a;\nmod b;\npub use a::A;\nfn f() { b::g(); }\n"),
            (
                "a.rs",
                "use crate::{\n    b::B,\n};\npub struct A;\nconst R: &[u8] = br#\"crate::X\"#;\n",
            ),
            (
                "b.rs",
                "pub struct B;\npub fn g() {}\nimpl B { type Error = (); const N: u8 = 1; }\nfn h(_: &'static str) {}\n",
            ),
        ]);
        assert!(cycles(&files).is_empty(), "{:?}", edges(&files));
        assert!(!edges(&files)
            .iter()
            .any(|(a, b, _)| a.ends_with("a.rs") && b.ends_with("lib.rs")));
        let b = files.iter().find(|(p, _)| p.ends_with("b.rs")).unwrap().1;
        assert!(!b.defined.contains("Error") && !b.defined.contains("N"));
    }

    #[test]
    fn a_parent_using_its_child_that_uses_it_is_a_cycle() {
        let files = crate_of(&[
            ("lib.rs", "mod a;\npub struct Shared;\nfn f() { a::g(); }\n"),
            ("a.rs", "use crate::Shared;\npub fn g() {}\n"),
        ]);
        assert_eq!(names(cycles(&files)), vec![vec!["a.rs", "lib.rs"]]);
    }
}
