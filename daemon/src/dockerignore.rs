//! `.dockerignore`: which paths of a tree stay out of a Docker build context. Owns the parsing
//! and matching rules only, with the docker CLI's semantics (its ignore-file reader, and
//! moby/patternmatcher as the CLI's context walker drives it); it never reads git or files.
//!
//! The engine does not apply `.dockerignore` to a tar context (the CLI does it client-side),
//! so [`crate::mirror`] asks this module about each tree entry while it writes the tar.
//!
//! Where moby's implementation is accidental rather than designed, this module follows Go's
//! `filepath.Match`, which moby validates every pattern against:
//! - `\c` is the literal `c` (moby hands it to a regexp, where `\d`, `\a`, … mean other things);
//! - inside `[...]`, `*` and `?` are literal (moby turns them into regexp pieces);
//! - `^` is literal outside classes (moby leaves it as a regexp anchor when the pattern has a
//!   wildcard).
//!
//! Deliberately kept from Docker: `[!a]` is the class of `!` and `a`, not a negation (only
//! `[^a]` negates); a class may match `/`; a pattern that starts with `**` not followed by `/`,
//! with no other wildcard, matches as a plain suffix (`**foo` excludes `a/barfoo`).

/// A `.dockerignore` Docker would refuse. The CLI fails the build on one and so do we: guessing
/// would either send files the author meant to keep out or drop files the build needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerIgnoreError {
    /// A line that is only `!` (after cleaning, as `!/` is): an exception of nothing.
    #[error(".dockerignore line {line}: `!` must be followed by a pattern")]
    EmptyException { line: usize },
    /// What Go's `filepath.Match` calls a bad pattern: an unclosed or empty `[...]`, a range
    /// with a missing end, a trailing `\`.
    #[error(".dockerignore line {line}: syntax error in pattern {pattern:?}")]
    BadPattern { line: usize, pattern: String },
}

/// The patterns of one `.dockerignore`, in file order (the last one that matches a path wins).
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern without its `!`: Docker compares this text, not the glob, when it
    /// decides whether an excluded directory can be skipped.
    text: String,
    /// A `!pattern`: re-includes what it matches.
    exception: bool,
    glob: Glob,
}

/// What the patterns said about one path, handed to the entries beneath it when it is a
/// directory (Docker's `MatchInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the path stays out of the context.
    excluded: bool,
    /// Per pattern: whether it matched this path or was inherited from the parent. Docker only
    /// records patterns it evaluated, so this is not "matches any ancestor" (see the test
    /// `exception_after_a_deeper_pattern_is_not_inherited`).
    matched: Vec<bool>,
}

impl Verdict {
    /// Whether the path stays out of the build context.
    pub fn excluded(&self) -> bool {
        self.excluded
    }
}

impl DockerIgnore {
    /// Reads a `.dockerignore` as the docker CLI does: one pattern per line (`\n` or `\r\n`), a
    /// UTF-8 byte order mark dropped, lines *starting* with `#` skipped (before trimming, so
    /// ` #x` is a pattern), surrounding whitespace trimmed, blank lines skipped, each pattern
    /// cleaned like Go's `filepath.Clean` with one leading `/` dropped, `!` marking an exception.
    pub fn parse(text: &str) -> Result<Self, DockerIgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, line) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            let Some(read) = read_line(line) else {
                continue;
            };
            // What moby's PatternMatcher then does to each line: trim and clean again (which
            // matters: `! a /` reads as `!a ` and becomes `!a`), then split off the `!`.
            let read = read.trim();
            if read.is_empty() {
                continue;
            }
            let cleaned = clean(read);
            let (exception, text) = match cleaned.strip_prefix('!') {
                Some("") => return Err(DockerIgnoreError::EmptyException { line: line_no }),
                Some(rest) => (true, rest),
                None => (false, cleaned.as_str()),
            };
            let glob = Glob::compile(text).ok_or_else(|| DockerIgnoreError::BadPattern {
                line: line_no,
                pattern: line.trim().to_owned(),
            })?;
            patterns.push(Pattern {
                text: text.to_owned(),
                exception,
                glob,
            });
        }
        Ok(DockerIgnore { patterns })
    }

    /// One step of Docker's walk of the context: the verdict on `path` (relative, `/`-separated,
    /// no leading `./`) given its parent directory's verdict. `parent` is `None` for an entry at
    /// the root; for a deeper path without its parent's verdict, the ancestors are matched
    /// directly, as Docker does when it has no parent result.
    pub fn check(&self, path: &str, parent: Option<&Verdict>) -> Verdict {
        let chars: Vec<char> = path.chars().collect();
        let mut excluded = false;
        let mut matched = Vec::with_capacity(self.patterns.len());
        for (i, pattern) in self.patterns.iter().enumerate() {
            let inherited = parent
                .and_then(|p| p.matched.get(i))
                .copied()
                .unwrap_or(false);
            // Docker evaluates a pattern only when it could change the answer so far (an
            // exclusion while included, an exception while excluded), and hands down only what
            // it evaluated.
            let hit = inherited
                || (pattern.exception == excluded
                    && (pattern.glob.matches(&chars)
                        || (parent.is_none() && pattern.matches_an_ancestor(&chars))));
            matched.push(hit);
            if hit {
                excluded = !pattern.exception;
            }
        }
        Verdict { excluded, matched }
    }

    /// Whether an exception could re-include something beneath the excluded directory `dir`,
    /// so the walk must go on into it. This is Docker's test, on the pattern's text: an
    /// exception whose text starts with `dir/` (`!docs/README.md` for `docs`). An exception that
    /// only matches there through a wildcard (`!**/keep.txt`) does not count, and Docker never
    /// sends what it would re-include.
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        self.patterns.iter().any(|p| {
            p.exception
                && p.text
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// The whole walk for one path: whether Docker leaves `path` out of the context, either by
    /// its own verdict or because an ancestor directory is excluded and skipped.
    #[cfg(test)]
    pub fn excludes(&self, path: &str) -> bool {
        let mut parent: Option<Verdict> = None;
        for (end, _) in path.match_indices('/') {
            let dir = &path[..end];
            let verdict = self.check(dir, parent.as_ref());
            if verdict.excluded && !self.may_reinclude_under(dir) {
                return true;
            }
            parent = Some(verdict);
        }
        self.check(path, parent.as_ref()).excluded
    }
}

impl Pattern {
    /// Whether the pattern matches one of the path's proper ancestor directories.
    fn matches_an_ancestor(&self, path: &[char]) -> bool {
        path.iter()
            .enumerate()
            .any(|(end, c)| *c == '/' && self.glob.matches(&path[..end]))
    }
}

/// The CLI's ignore-file reader for one line (CR already dropped): `None` for comments and
/// blank lines, else the pattern, cleaned, relative to the context, `!` kept in front.
fn read_line(line: &str) -> Option<String> {
    if line.starts_with('#') {
        return None;
    }
    let pattern = line.trim();
    if pattern.is_empty() {
        return None;
    }
    let (exception, pattern) = match pattern.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, pattern),
    };
    let mut read = String::new();
    if exception {
        read.push('!');
    }
    if !pattern.is_empty() {
        let cleaned = clean(pattern);
        // Patterns are relative to the context root: `/foo` is `foo`, but `/` stays `/`.
        match cleaned.strip_prefix('/') {
            Some(rest) if !rest.is_empty() => read.push_str(rest),
            _ => read.push_str(&cleaned),
        }
    }
    Some(read)
}

/// Go's `filepath.Clean` with `/` as separator: no empty or `.` elements, `..` folded into the
/// element before it (and dropped at the root), no trailing `/`, `.` for nothing.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

/// One compiled pattern, matched against a whole path.
#[derive(Debug, Clone)]
struct Glob {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone)]
enum Token {
    /// This character.
    Char(char),
    /// `*`: any run of characters other than `/`.
    Star,
    /// `?`: one character other than `/`.
    Question,
    /// `[...]`: one character (any, `/` included) in or, negated, not in the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` before more pattern: nothing, or anything that ends with `/` (whole directories).
    AnyDirs,
    /// `**` at the end: anything at all.
    AnyPath,
}

impl Glob {
    /// Compiles a cleaned pattern, or `None` where Go's `filepath.Match` reports a bad pattern.
    fn compile(pattern: &str) -> Option<Glob> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            i += 1;
            match c {
                '*' if chars.get(i) == Some(&'*') => {
                    let leading = i == 1;
                    i += 1;
                    let slash = chars.get(i) == Some(&'/');
                    if slash {
                        i += 1;
                    }
                    let rest = &chars[i..];
                    // moby matches a leading `**` followed only by plain characters as a bare
                    // suffix, without requiring a `/` before them.
                    let suffix = leading && !slash && rest.iter().all(|c| !"*?[]\\".contains(*c));
                    tokens.push(if rest.is_empty() || suffix {
                        Token::AnyPath
                    } else {
                        Token::AnyDirs
                    });
                }
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Question),
                '\\' => {
                    let escaped = *chars.get(i)?;
                    i += 1;
                    tokens.push(Token::Char(escaped));
                }
                '[' => tokens.push(class(&chars, &mut i)?),
                c => tokens.push(Token::Char(c)),
            }
        }
        Some(Glob { tokens })
    }

    /// Whether the whole of `path` matches. Dynamic programming from the last token back, so
    /// patterns with many stars stay linear in the path per token.
    fn matches(&self, path: &[char]) -> bool {
        let n = path.len();
        // next[j]: the tokens after the current one match path[j..].
        let mut next = vec![false; n + 1];
        next[n] = true;
        let mut cur = vec![false; n + 1];
        for token in self.tokens.iter().rev() {
            cur[n] = match token {
                Token::Star | Token::AnyDirs | Token::AnyPath => next[n],
                _ => false,
            };
            let mut inside_dirs = false;
            for j in (0..n).rev() {
                let c = path[j];
                cur[j] = match token {
                    Token::Char(want) => c == *want && next[j + 1],
                    Token::Question => c != '/' && next[j + 1],
                    Token::Class { negated, ranges } => {
                        let within = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                        within != *negated && next[j + 1]
                    }
                    Token::Star => next[j] || (c != '/' && cur[j + 1]),
                    Token::AnyPath => next[j] || cur[j + 1],
                    Token::AnyDirs => {
                        // Some `/` at or after j ends the skipped directories.
                        inside_dirs = inside_dirs || (c == '/' && next[j + 1]);
                        next[j] || inside_dirs
                    }
                };
            }
            std::mem::swap(&mut cur, &mut next);
        }
        next[0]
    }
}

/// Parses a class after its `[`, with `filepath.Match`'s rules: `^` negates, at least one range,
/// `-` and `]` only escaped or in their places, `\` escapes, and the class must close.
fn class(chars: &[char], i: &mut usize) -> Option<Token> {
    let negated = chars.get(*i) == Some(&'^');
    if negated {
        *i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(*i) == Some(&']') && !ranges.is_empty() {
            *i += 1;
            return Some(Token::Class { negated, ranges });
        }
        let lo = class_char(chars, i)?;
        let hi = if chars.get(*i) == Some(&'-') {
            *i += 1;
            class_char(chars, i)?
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
}

/// One character of a class (Go's `getEsc`); `None` on a bare `-` or `]`, or at the end of the
/// pattern, since the class would never close.
fn class_char(chars: &[char], i: &mut usize) -> Option<char> {
    let mut c = *chars.get(*i)?;
    if c == '-' || c == ']' {
        return None;
    }
    if c == '\\' {
        *i += 1;
        c = *chars.get(*i)?;
    }
    *i += 1;
    if *i >= chars.len() {
        return None;
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patterns as read, `!` in front of exceptions.
    fn texts(ignore: &DockerIgnore) -> Vec<String> {
        ignore
            .patterns
            .iter()
            .map(|p| format!("{}{}", if p.exception { "!" } else { "" }, p.text))
            .collect()
    }

    #[test]
    fn lines_are_read_like_the_cli() {
        let cases: &[(&str, &[&str])] = &[
            ("# comment\n\nfoo\n", &["foo"]),
            ("  foo  \n\t\n   \n", &["foo"]),
            // Only a `#` in the first column starts a comment.
            ("  #x", &["#x"]),
            ("/abs", &["abs"]),
            ("//abs//", &["abs"]),
            ("dir/", &["dir"]),
            ("./a//b/../c/", &["a/c"]),
            ("a/..", &["."]),
            ("../up", &["../up"]),
            ("/", &["/"]),
            ("! /inverted/abs/path", &["!inverted/abs/path"]),
            ("! a /", &["!a"]),
            // Cleaning brings the `!` to the front, and Docker then reads an exception.
            ("./!x", &["!x"]),
            ("\\!x", &["\\!x"]),
            ("\u{feff}foo\r\nbar\r\n", &["foo", "bar"]),
            ("*.md\n!README.md", &["*.md", "!README.md"]),
            ("", &[]),
        ];
        for (text, want) in cases {
            let ignore = DockerIgnore::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(texts(&ignore), *want, "{text:?}");
        }
    }

    #[test]
    fn patterns_docker_refuses_are_errors() {
        let bad = |line: usize, pattern: &str| DockerIgnoreError::BadPattern {
            line,
            pattern: pattern.to_owned(),
        };
        let empty = |line: usize| DockerIgnoreError::EmptyException { line };
        let cases = [
            ("[a", bad(1, "[a")),
            ("ok\n  [] ", bad(2, "[]")),
            ("[^]", bad(1, "[^]")),
            ("[-a]", bad(1, "[-a]")),
            ("[a-]", bad(1, "[a-]")),
            ("[a-b-c]", bad(1, "[a-b-c]")),
            ("[a\\", bad(1, "[a\\")),
            ("a\\", bad(1, "a\\")),
            ("!", empty(1)),
            ("# c\n! ", empty(2)),
            ("!/", empty(1)),
        ];
        for (text, want) in cases {
            assert_eq!(DockerIgnore::parse(text).unwrap_err(), want, "{text:?}");
        }
    }

    #[test]
    fn paths_are_matched_like_docker() {
        let cases: &[(&str, &str, bool)] = &[
            // `*` stays within one name.
            ("*.md", "a.md", true),
            ("*.md", "README.md", true),
            ("*.md", "docs/a.md", false),
            ("*.md", "a.mdx", false),
            ("*/*.md", "docs/a.md", true),
            // An exception after the pattern re-includes; before it, it is overridden.
            ("*.md\n!README.md", "README.md", false),
            ("*.md\n!README.md", "CHANGES.md", true),
            ("!README.md\n*.md", "README.md", true),
            ("*\n!src", "src/main.rs", false),
            ("*\n!src", "Cargo.toml", true),
            // `**` spans any number of directories, none included.
            ("**/*.go", "main.go", true),
            ("**/*.go", "a/b/c.go", true),
            ("**/*.go", "a/b/c.gox", false),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "a/b/c", true),
            ("a/**/b", "a/xb", false),
            ("a/**/b", "b", false),
            ("**", "anything/at/all", true),
            ("**", "x", true),
            ("foo**", "foobar/baz", true),
            ("foo/**", "foo/x/y", true),
            ("foo/**", "foo", false),
            ("**foo", "a/barfoo", true),
            ("**/foo", "a/barfoo", false),
            ("**/foo", "a/foo", true),
            // `?` is one character, never `/`.
            ("temp?", "temp1", true),
            ("temp?", "temp", false),
            ("temp?", "temp12", false),
            ("temp?", "tempa/x", true),
            ("a?b", "a/b", false),
            ("?.txt", "é.txt", true),
            // Classes, with `^` negation and ranges; `!` is not a negation.
            ("[a-c]x", "ax", true),
            ("[a-c]x", "cx", true),
            ("[a-c]x", "dx", false),
            ("[a-c]x", "[a-c]x", false),
            ("[^a-c]x", "dx", true),
            ("[^a-c]x", "bx", false),
            ("[!a]x", "!x", true),
            ("[!a]x", "ax", true),
            ("[!a]x", "bx", false),
            ("[\\]]", "]", true),
            ("[*]", "*", true),
            ("[*]", "a", false),
            // Escapes make wildcards and `#` literal.
            ("\\*.txt", "*.txt", true),
            ("\\*.txt", "a.txt", false),
            ("\\#x", "#x", true),
            ("a^b", "a^b", true),
            ("a.c", "abc", false),
            // Relative to the root: a leading `/` is dropped, and there is no match at depth.
            ("/abs", "abs", true),
            ("/abs", "x/abs", false),
            ("abs", "x/abs", false),
            // A trailing `/` is cleaned away: the directory, and so everything in it.
            ("dir/", "dir", true),
            ("dir/", "dir/f", true),
            ("dir/", "other/dir", false),
            // An excluded directory excludes what is beneath it.
            ("node_modules", "node_modules/a/b.js", true),
            ("node_modules", "node_modules2/a.js", false),
            // ... unless an exception names something there.
            ("docs\n!docs/README.md", "docs/README.md", false),
            ("docs\n!docs/README.md", "docs/guide.md", true),
            ("docs\n!docs/README.md", "docs", true),
            ("docs\n!docs/sub/a.txt", "docs/sub/a.txt", false),
            ("docs\n!docs/sub/a.txt", "docs/sub/b.txt", true),
            ("docs\n!docs/*.md", "docs/a.md", false),
            // Comments, blank lines and whitespace.
            ("# x\n\n  \n", "# x", false),
            ("# x\n\n  \n", "x", false),
            ("  #x", "#x", true),
            ("  spaced  ", "spaced", true),
            ("/", "x", false),
            ("", "x", false),
        ];
        for (text, path, want) in cases {
            let ignore = DockerIgnore::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(ignore.excludes(path), *want, "{text:?} on {path:?}");
        }
    }

    /// Docker skips an excluded directory unless an exception's text starts with it, so an
    /// exception that reaches there only through a wildcard re-includes nothing beneath it.
    #[test]
    fn wildcard_exception_does_not_reach_into_a_skipped_directory() {
        let ignore = DockerIgnore::parse("vendor\n!**/keep.txt").unwrap();
        assert!(ignore.excludes("vendor/keep.txt"));
        assert!(!ignore.excludes("keep.txt"));
        assert!(!ignore.excludes("src/keep.txt"));
    }

    /// Docker hands a pattern's result down only when it evaluated it for the directory: `!d`
    /// was not evaluated for `d` (nothing was excluded yet), so it does not re-include `d/f`.
    #[test]
    fn exception_after_a_deeper_pattern_is_not_inherited() {
        let ignore = DockerIgnore::parse("d/f\n!d").unwrap();
        assert!(ignore.excludes("d/f"));
        assert!(!ignore.excludes("d/g"));
    }

    #[test]
    fn check_without_a_parent_matches_the_ancestors() {
        let ignore = DockerIgnore::parse("node_modules").unwrap();
        assert!(ignore.check("node_modules/a/b.js", None).excluded());
        let dir = ignore.check("node_modules", None);
        assert!(dir.excluded());
        assert!(ignore.check("node_modules/a", Some(&dir)).excluded());
        assert!(!ignore.check("src/a", None).excluded());
    }

    #[test]
    fn reinclusion_under_a_directory() {
        let ignore =
            DockerIgnore::parse("docs\n!docs/sub/README.md\n!**/keep\nnot/an/exception").unwrap();
        let cases = [
            ("docs", true),
            ("docs/sub", true),
            ("docs/sub/README.md", true),
            ("docs/other", false),
            ("doc", false),
            ("docs/su", false),
            ("not", false),
            ("vendor", false),
        ];
        for (dir, want) in cases {
            assert_eq!(ignore.may_reinclude_under(dir), want, "{dir:?}");
        }
    }

    #[test]
    fn clean_is_go_filepath_clean() {
        let cases = [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("a/", "a"),
            ("a//b", "a/b"),
            ("./a/./b/.", "a/b"),
            ("a/b/../c", "a/c"),
            ("a/../..", ".."),
            ("../../a", "../../a"),
            ("/../a", "/a"),
            ("/a/..", "/"),
        ];
        for (path, want) in cases {
            assert_eq!(clean(path), want, "{path:?}");
        }
    }

    #[test]
    fn many_stars_stay_fast() {
        let ignore = DockerIgnore::parse(&"*a".repeat(30)).unwrap();
        assert!(!ignore.excludes(&"a".repeat(29)));
        assert!(ignore.excludes(&"a".repeat(60)));
    }
}
