//! The SQL plumbing classification and masking share: the dialect of an engine, parsing that
//! survives parser panics, splitting scripts on top-level semicolons and reading leading keywords.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ferry_core::Engine;
use sqlparser::ast::{ObjectName, Statement};
use sqlparser::dialect::{Dialect, GenericDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// The sqlparser dialect that reads an engine's SQL; Redis and archives use the generic one.
pub(crate) fn dialect(engine: Engine) -> Box<dyn Dialect> {
    match engine {
        Engine::Postgres => Box::new(PostgreSqlDialect {}),
        Engine::Mysql => Box::new(MySqlDialect {}),
        Engine::Sqlite => Box::new(SQLiteDialect {}),
        Engine::Redis | Engine::Archive => Box::new(GenericDialect {}),
    }
}

/// Function calls nested deeper than this are not parsed: sqlparser's time grows
/// exponentially with call nesting (about twice per level).
const MAX_CALL_NESTING: usize = 12;

/// How deep the parser may recurse (sqlparser's default is 50). The workspace builds sqlparser
/// without `recursive-protection`, so the stack bounds it: a release build stays within a
/// 2 MiB thread (tokio's and the test harness's default) at 50 levels, a debug build, with
/// frames several times larger, only at about 20.
const RECURSION_LIMIT: usize = if cfg!(debug_assertions) { 20 } else { 50 };

/// Operator chains longer than this (summed over enclosing parentheses) are not parsed: a chain
/// becomes a tree as deep as it is long, and sqlparser walks, prints and drops trees
/// recursively, so a long enough chain overflows the stack and aborts the process.
const MAX_OPERATOR_DEPTH: usize = 2000;

/// Parses SQL, turning a parser panic into an error so one odd input cannot take a caller down,
/// and refusing text nested beyond what the parser handles in bounded time and stack.
pub(crate) fn parse(engine: Engine, sql: &str) -> Result<Vec<Statement>, String> {
    if let Some(tokens) = tokens(engine, sql) {
        check_nesting(&tokens)?;
    }
    let dialect = dialect(engine);
    match catch_unwind(AssertUnwindSafe(|| {
        Parser::new(dialect.as_ref())
            .with_recursion_limit(RECURSION_LIMIT)
            .try_with_sql(sql)?
            .parse_statements()
    })) {
        Ok(Ok(statements)) => Ok(statements),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the SQL parser failed on this text".to_string()),
    }
}

/// The tokens of a text, or `None` if the tokenizer cannot read it (or panics on it).
pub(crate) fn tokens(engine: Engine, sql: &str) -> Option<Vec<TokenWithSpan>> {
    let dialect = dialect(engine);
    catch_unwind(AssertUnwindSafe(|| {
        Tokenizer::new(dialect.as_ref(), sql).tokenize_with_location()
    }))
    .ok()?
    .ok()
}

/// Checks the limits above on a token stream.
fn check_nesting(tokens: &[TokenWithSpan]) -> Result<(), String> {
    struct Level {
        call: bool,
        operators: usize,
    }
    let mut levels = vec![Level {
        call: false,
        operators: 0,
    }];
    let (mut calls, mut operators) = (0usize, 0usize);
    let mut previous_was_word = false;
    for t in tokens {
        let token = &t.token;
        match token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::LParen | Token::LBracket => {
                levels.push(Level {
                    call: previous_was_word,
                    operators: 0,
                });
                calls += usize::from(previous_was_word);
                if calls > MAX_CALL_NESTING {
                    return Err(format!(
                        "function calls are nested more than {MAX_CALL_NESTING} deep, more than this checker parses"
                    ));
                }
            }
            Token::RParen | Token::RBracket => {
                if levels.len() > 1
                    && let Some(level) = levels.pop()
                {
                    calls -= usize::from(level.call);
                    operators -= level.operators;
                }
            }
            Token::Comma | Token::SemiColon => {
                if let Some(level) = levels.last_mut() {
                    operators -= level.operators;
                    level.operators = 0;
                }
            }
            _ if is_operator(token) => {
                if let Some(level) = levels.last_mut() {
                    level.operators += 1;
                    operators += 1;
                }
                if operators > MAX_OPERATOR_DEPTH {
                    return Err(format!(
                        "an expression chains more than {MAX_OPERATOR_DEPTH} operators, more than this checker parses"
                    ));
                }
            }
            _ => {}
        }
        previous_was_word = matches!(token, Token::Word(w) if !SYNTAX_BEFORE_PARENTHESES
            .iter()
            .any(|k| w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k)));
    }
    Ok(())
}

/// Keywords a parenthesis follows without making a function call.
const SYNTAX_BEFORE_PARENTHESES: &[&str] = &[
    "SELECT",
    "IN",
    "EXISTS",
    "VALUES",
    "AS",
    "FROM",
    "JOIN",
    "ON",
    "USING",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "CAST",
    "ARRAY",
    "ANY",
    "ALL",
    "SOME",
    "OVER",
    "LATERAL",
    "WITH",
    "INTO",
    "TABLE",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "THEN",
    "ELSE",
    "WHEN",
    "CASE",
    "BY",
    "HAVING",
    "IS",
];

/// Whether a token may join two expressions into a deeper one. Anything that is not plainly
/// a name, a literal or punctuation counts, which errs on the side of counting.
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(w) => [
            "AND", "OR", "XOR", "NOT", "IS", "LIKE", "ILIKE", "BETWEEN", "IN",
        ]
        .iter()
        .any(|k| w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k)),
        Token::Number(_, _)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Placeholder(_)
        | Token::Period
        | Token::Colon => false,
        _ => true,
    }
}

/// Splits a script into its statements, trimmed, without the separating semicolons. Text the
/// tokenizer cannot read is returned whole, so it is classified (as unknown) rather than lost.
pub(crate) fn split_statements(engine: Engine, script: &str) -> Vec<String> {
    let Some(tokens) = tokens(engine, script) else {
        let whole = script.trim();
        return if whole.is_empty() {
            vec![]
        } else {
            vec![whole.to_string()]
        };
    };
    let offsets = LineOffsets::new(script);
    let mut statements = Vec::new();
    let mut start = 0usize;
    let mut has_content = false;
    for t in &tokens {
        match &t.token {
            Token::SemiColon => {
                let end = offsets.byte(script, t).max(start);
                push_statement(&mut statements, &script[start..end], has_content);
                start = (end + 1).min(script.len());
                has_content = false;
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => has_content = true,
        }
    }
    push_statement(&mut statements, &script[start..], has_content);
    statements
}

fn push_statement(out: &mut Vec<String>, text: &str, has_content: bool) {
    let text = text.trim();
    if has_content && !text.is_empty() {
        out.push(text.to_string());
    }
}

/// The first `count` words of a statement in upper case, skipping comments and punctuation.
pub(crate) fn leading_words(engine: Engine, sql: &str, count: usize) -> Vec<String> {
    let Some(tokens) = tokens(engine, sql) else {
        return sql
            .split_whitespace()
            .take(count)
            .map(str::to_ascii_uppercase)
            .collect();
    };
    tokens
        .into_iter()
        .filter_map(|t| match t.token {
            Token::Word(w) => Some(w.value.to_ascii_uppercase()),
            _ => None,
        })
        .take(count)
        .collect()
}

/// The parts of a name as written, without quotes (`"public"."users"` → `["public", "users"]`).
pub(crate) fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p.as_ident() {
            Some(ident) => ident.value.clone(),
            None => p.to_string(),
        })
        .collect()
}

/// The last part of a name in lower case: a function's or table's own name.
pub(crate) fn last_part_lower(name: &ObjectName) -> String {
    name_parts(name)
        .last()
        .map(|p| p.to_lowercase())
        .unwrap_or_default()
}

struct LineOffsets {
    starts: Vec<usize>,
}

impl LineOffsets {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineOffsets { starts }
    }

    /// Byte offset of a token's first character; the tokenizer counts lines and columns in
    /// chars from 1.
    fn byte(&self, text: &str, t: &TokenWithSpan) -> usize {
        let line = (t.span.start.line as usize).saturating_sub(1);
        let line_start = self.starts.get(line).copied().unwrap_or(text.len());
        let col = (t.span.start.column as usize).saturating_sub(1);
        text[line_start..]
            .char_indices()
            .nth(col)
            .map(|(i, _)| line_start + i)
            .unwrap_or(text.len())
    }
}

/// Runs `f` on a thread with a large stack. Deep SQL makes the parser and the planners recurse,
/// and a stack overflow aborts the whole process (it cannot be caught like a panic). The stack
/// is reserved address space, committed only as far as it is used. When no thread can be
/// started, `f` runs on the caller's stack.
pub(crate) fn with_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    const STACK: usize = 256 << 20;
    let work = std::sync::Mutex::new(Some(f));
    let take = || work.lock().unwrap_or_else(|e| e.into_inner()).take();
    let started = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("ferry-guard".into())
            .stack_size(STACK)
            .spawn_scoped(scope, || take().map(|f| f()));
        match spawned {
            Ok(handle) => match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            Err(_) => None,
        }
    });
    match started {
        Some(result) => result,
        None => match take() {
            Some(f) => f(),
            None => unreachable!("the work ran on the big-stack thread or not at all"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(engine: Engine, script: &str, expected: &[&str]) {
        assert_eq!(split_statements(engine, script), expected, "{script:?}");
    }

    #[test]
    fn splits_on_top_level_semicolons_only() {
        check(
            Engine::Postgres,
            "select 1; select 2;",
            &["select 1", "select 2"],
        );
        check(
            Engine::Postgres,
            "select ';'; delete from t",
            &["select ';'", "delete from t"],
        );
        check(
            Engine::Postgres,
            "select $$a;b$$; -- c;\nselect 2",
            &["select $$a;b$$", "-- c;\nselect 2"],
        );
        check(
            Engine::Mysql,
            "select `a;b` from t; ; ;",
            &["select `a;b` from t"],
        );
        check(
            Engine::Sqlite,
            "select 'é;😀'; select 1",
            &["select 'é;😀'", "select 1"],
        );
        check(Engine::Postgres, "/* only a comment */", &[]);
        check(
            Engine::Postgres,
            "select 'unterminated; x",
            &["select 'unterminated; x"],
        );
    }
}
