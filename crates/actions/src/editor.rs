//! Text operations of the file actions, with OpenHands' semantics (`read_lines`, OHEditor's
//! `view`, `str_replace`, `insert`). Pure functions: no I/O here.

/// Output longer than this many characters is clipped (OHEditor's limit).
pub(crate) const MAX_EDITOR_OUTPUT: usize = 16_000;
/// Files larger than this are refused by the editor.
pub(crate) const MAX_FILE_BYTES: u64 = 10 << 20;
/// Lines of context around an edit in the returned snippet.
const SNIPPET_LINES: usize = 4;

/// Lines `start..end` (0-based, end exclusive, `-1` = to the end), newlines kept.
pub(crate) fn read_lines(content: &str, start: i64, end: i64) -> String {
    let lines: Vec<&str> = content.split_inclusive('\n').collect();
    let n = lines.len() as i64;
    let s = start.clamp(0, n) as usize;
    let e = if end < 0 { n } else { end.clamp(0, n) } as usize;
    if s >= e {
        return String::new();
    }
    lines[s..e].concat()
}

/// `cat -n` numbering from line `first` (1-based).
pub(crate) fn numbered(content: &str, first: usize) -> String {
    let mut out = String::new();
    for (i, line) in content.split('\n').enumerate() {
        out.push_str(&format!("{:6}\t{}\n", i + first, line));
    }
    out
}

/// Clips long editor output as OHEditor does.
pub(crate) fn clip(text: String) -> String {
    if text.chars().count() <= MAX_EDITOR_OUTPUT {
        return text;
    }
    let cut: String = text.chars().take(MAX_EDITOR_OUTPUT).collect();
    format!(
        "{cut}<response clipped><NOTE>To save on context only part of this file has been shown to you. \
         Use `view_range` to see the rest.</NOTE>"
    )
}

/// OHEditor `view` of a file, with an optional 1-based inclusive `[start, end]` (`end = -1`: EOF).
pub(crate) fn view(path: &str, content: &str, range: Option<[i64; 2]>) -> Result<String, String> {
    let body = content.strip_suffix('\n').unwrap_or(content);
    let lines: Vec<&str> = body.split('\n').collect();
    let n = lines.len() as i64;
    let (text, first, note) = match range {
        None => (body.to_string(), 1usize, String::new()),
        Some([start, end]) => {
            if start < 1 || start > n {
                return Err(format!(
                    "Invalid `view_range` parameter: [{start}, {end}]. Its first element `{start}` should be within the range of lines of the file: [1, {n}]."
                ));
            }
            let mut note = String::new();
            let e = if end == -1 {
                n
            } else if end < start {
                return Err(format!(
                    "Invalid `view_range` parameter: [{start}, {end}]. Its second element `{end}` should be greater than or equal to the first element `{start}`."
                ));
            } else if end > n {
                note = format!(
                    "NOTE: We only show up to {n} since there're only {n} lines in this file.\n"
                );
                n
            } else {
                end
            };
            (
                lines[(start - 1) as usize..e as usize].join("\n"),
                start as usize,
                note,
            )
        }
    };
    Ok(clip(format!(
        "{note}Here's the result of running `cat -n` on {path}:\n{}",
        numbered(&text, first)
    )))
}

/// Lines (1-based) at which `needle` starts in `haystack`.
fn match_lines(haystack: &str, needle: &str) -> Vec<usize> {
    haystack
        .match_indices(needle)
        .map(|(i, _)| haystack[..i].matches('\n').count() + 1)
        .collect()
}

/// A snippet of the new content around line `at` (1-based), `cat -n` numbered.
fn snippet(path: &str, content: &str, at: usize, added_lines: usize) -> String {
    let lines: Vec<&str> = content.split('\n').collect();
    let start = at.saturating_sub(SNIPPET_LINES).max(1);
    let end = (at + added_lines + SNIPPET_LINES).min(lines.len());
    let text = lines[start - 1..end].join("\n");
    format!(
        "The file {path} has been edited. Here's the result of running `cat -n` on a snippet of {path}:\n{}Review the changes and make sure they are as expected. Edit the file again if necessary.",
        numbered(&text, start)
    )
}

/// OHEditor `str_replace`: `old` must occur exactly once.
pub(crate) fn str_replace(
    path: &str,
    content: &str,
    old: &str,
    new: &str,
) -> Result<(String, String), String> {
    if old.is_empty() {
        return Err("The `old_str` parameter cannot be empty.".into());
    }
    if old == new {
        return Err(String::from(
            "No replacement was performed. `new_str` and `old_str` must be different.",
        ));
    }
    let at = match_lines(content, old);
    match at.as_slice() {
        [] => Err(format!("No replacement was performed, old_str `{old}` did not appear verbatim in {path}.")),
        [line] => {
            let replaced = content.replacen(old, new, 1);
            let shown = snippet(path, &replaced, *line, new.matches('\n').count());
            Ok((replaced, shown))
        }
        many => Err(format!(
            "No replacement was performed. Multiple occurrences of old_str `{old}` in lines {:?}. Please ensure it is unique.",
            many
        )),
    }
}

/// OHEditor `insert`: `text` goes after line `after` (0 = at the top).
pub(crate) fn insert(
    path: &str,
    content: &str,
    after: i64,
    text: &str,
) -> Result<(String, String), String> {
    let had_newline = content.ends_with('\n');
    let body = content.strip_suffix('\n').unwrap_or(content);
    let mut lines: Vec<&str> = if body.is_empty() {
        Vec::new()
    } else {
        body.split('\n').collect()
    };
    let n = lines.len() as i64;
    if after < 0 || after > n {
        return Err(format!(
            "Invalid `insert_line` parameter: {after}. It should be within the range of lines of the file: [0, {n}]"
        ));
    }
    let new_lines: Vec<&str> = text.split('\n').collect();
    let count = new_lines.len();
    for (i, l) in new_lines.into_iter().enumerate() {
        lines.insert(after as usize + i, l);
    }
    let mut out = lines.join("\n");
    if had_newline || content.is_empty() {
        out.push('\n');
    }
    let shown = snippet(path, &out, after as usize + 1, count.saturating_sub(1));
    Ok((out, shown))
}

/// OpenHands `insert_lines`: replaces lines `start..end` (0-based, `-1` = to the end) with
/// `new`.
pub(crate) fn replace_lines(content: &str, new: &str, start: i64, end: i64) -> String {
    let lines: Vec<&str> = content.split_inclusive('\n').collect();
    let n = lines.len() as i64;
    let s = start.clamp(0, n) as usize;
    let e = if end < 0 { n } else { end.clamp(s as i64, n) } as usize;
    let mut out = lines[..s].concat();
    out.push_str(new);
    if !new.is_empty() && !new.ends_with('\n') && e < lines.len() {
        out.push('\n');
    }
    out.push_str(&lines[e..].concat());
    out
}

/// Whether bytes look binary: NUL bytes, or not UTF-8.
pub(crate) fn is_binary(bytes: &[u8]) -> bool {
    bytes.contains(&0) || std::str::from_utf8(bytes).is_err()
}

/// Middle truncation of command output: `limit` characters at most, half from each end.
pub fn truncate_middle(text: &str, limit: usize) -> String {
    let count = text.chars().count();
    if count <= limit {
        return text.to_string();
    }
    let half = limit / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(count - half).collect();
    format!("{head}\n[... Observation truncated due to length ...]\n{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_lines_slices_keep_newlines() {
        let c = "a\nb\nc\n";
        assert_eq!(read_lines(c, 0, -1), c);
        assert_eq!(read_lines(c, 1, 2), "b\n");
        assert_eq!(read_lines(c, 2, 10), "c\n");
        assert_eq!(read_lines(c, 5, -1), "");
    }

    #[test]
    fn view_numbers_and_ranges() {
        let c = "one\ntwo\nthree\n";
        let v = view("/f", c, None).unwrap();
        assert!(
            v.ends_with("     1\tone\n     2\ttwo\n     3\tthree\n"),
            "{v}"
        );
        let v = view("/f", c, Some([2, -1])).unwrap();
        assert!(v.ends_with("     2\ttwo\n     3\tthree\n"), "{v}");
        let v = view("/f", c, Some([2, 9])).unwrap();
        assert!(v.starts_with("NOTE: We only show up to 3"), "{v}");
        assert!(view("/f", c, Some([4, 5])).is_err());
        assert!(view("/f", c, Some([3, 2])).is_err());
    }

    #[test]
    fn str_replace_unique_only() {
        let c = "fn a() {}\nfn b() {}\nfn a() {}\n";
        let e = str_replace("/f", c, "fn a() {}", "x").unwrap_err();
        assert!(e.contains("[1, 3]"), "{e}");
        let e = str_replace("/f", c, "missing", "x").unwrap_err();
        assert!(e.contains("did not appear verbatim"), "{e}");
        let (new, shown) = str_replace("/f", c, "fn b() {}", "fn b() { 1 }").unwrap();
        assert_eq!(new, "fn a() {}\nfn b() { 1 }\nfn a() {}\n");
        assert!(shown.contains("     2\tfn b() { 1 }"), "{shown}");
    }

    #[test]
    fn insert_after_line() {
        let (new, _) = insert("/f", "a\nb\n", 1, "x\ny").unwrap();
        assert_eq!(new, "a\nx\ny\nb\n");
        let (new, _) = insert("/f", "a\nb\n", 0, "top").unwrap();
        assert_eq!(new, "top\na\nb\n");
        assert!(insert("/f", "a\n", 5, "x").is_err());
    }

    #[test]
    fn replace_line_ranges() {
        assert_eq!(replace_lines("a\nb\nc\n", "X\n", 1, 2), "a\nX\nc\n");
        assert_eq!(replace_lines("a\nb\nc\n", "all\n", 0, -1), "all\n");
        assert_eq!(replace_lines("a\nb\n", "Y", 1, 2), "a\nY");
    }

    #[test]
    fn truncation_keeps_both_ends() {
        let text: String = "a".repeat(20_000) + &"b".repeat(20_000);
        let t = truncate_middle(&text, 30_000);
        assert!(t.starts_with(&"a".repeat(15_000)));
        assert!(t.ends_with(&"b".repeat(15_000)));
        assert!(t.contains("[... Observation truncated due to length ...]"));
        assert_eq!(truncate_middle("short", 30_000), "short");
    }

    #[test]
    fn binary_detection() {
        assert!(is_binary(b"a\0b"));
        assert!(is_binary(&[0xff, 0xfe]));
        assert!(!is_binary("héllo".as_bytes()));
    }
}
