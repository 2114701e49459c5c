//! Splits SQL scripts into statements with sqlparser's tokenizer in the engine's dialect, so
//! semicolons inside strings, quoted names, comments and dollar quotes do not split, and
//! finds a statement's leading keyword (used to follow transaction state).

use ferry_core::Engine;
use sqlparser::dialect::{Dialect, GenericDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

fn dialect(engine: Engine) -> Box<dyn Dialect> {
    match engine {
        Engine::Postgres => Box::new(PostgreSqlDialect {}),
        Engine::Mysql => Box::new(MySqlDialect {}),
        Engine::Sqlite => Box::new(SQLiteDialect {}),
        Engine::Redis | Engine::Archive => Box::new(GenericDialect {}),
    }
}

/// Splits a script into its statements, trimmed, without the separating semicolons. Redis
/// scripts split by line. Text the tokenizer cannot read is returned whole, so the engine
/// reports the error in its own words.
pub fn split_statements(engine: Engine, script: &str) -> Vec<String> {
    if engine == Engine::Redis {
        return script
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
    }
    let dialect = dialect(engine);
    let Ok(tokens) = Tokenizer::new(dialect.as_ref(), script).tokenize_with_location() else {
        let whole = script.trim().trim_end_matches(';').trim();
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
                let end = offsets.byte(script, t);
                push_statement(&mut statements, &script[start..end], has_content);
                start = end + 1;
                has_content = false;
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => has_content = true,
        }
    }
    push_statement(
        &mut statements,
        &script[start.min(script.len())..],
        has_content,
    );
    statements
}

fn push_statement(out: &mut Vec<String>, text: &str, has_content: bool) {
    let text = text.trim();
    if has_content && !text.is_empty() {
        out.push(text.to_string());
    }
}

/// The first `count` keywords of a statement in upper case, skipping comments and punctuation.
pub fn leading_keywords(engine: Engine, sql: &str, count: usize) -> Vec<String> {
    let dialect = dialect(engine);
    let Ok(tokens) = Tokenizer::new(dialect.as_ref(), sql).tokenize() else {
        return vec![];
    };
    tokens
        .into_iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.value.to_ascii_uppercase()),
            _ => None,
        })
        .take(count)
        .collect()
}

/// Follows whether a connection is inside an explicit transaction from the statements run on it.
pub fn transaction_state_after(engine: Engine, sql: &str, was_in_transaction: bool) -> bool {
    let words = leading_keywords(engine, sql, 2);
    let first = words.first().map(String::as_str).unwrap_or("");
    let second = words.get(1).map(String::as_str).unwrap_or("");
    match first {
        "BEGIN" => true,
        "START" if second == "TRANSACTION" => true,
        "COMMIT" | "END" | "ABORT" => false,
        "ROLLBACK" if second == "TO" => was_in_transaction,
        "ROLLBACK" => false,
        _ => was_in_transaction,
    }
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

    /// Byte offset of a token's first character; the tokenizer counts lines and columns in chars from 1.
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
            "select ';' as a; select 2",
            &["select ';' as a", "select 2"],
        );
        check(
            Engine::Postgres,
            "select $$a;b$$; -- c;\nselect \"x;y\"",
            &["select $$a;b$$", "-- c;\nselect \"x;y\""],
        );
        check(
            Engine::Mysql,
            "select `a;b` from t; ; ;",
            &["select `a;b` from t"],
        );
        check(
            Engine::Sqlite,
            "insert into t values ('é;🚀');\nselect 1",
            &["insert into t values ('é;🚀')", "select 1"],
        );
        check(Engine::Postgres, "  ", &[]);
        check(Engine::Postgres, "/* only a comment */", &[]);
        check(
            Engine::Postgres,
            "select 'unterminated; x",
            &["select 'unterminated; x"],
        );
        check(Engine::Redis, "SET a 1\n\nGET a\n", &["SET a 1", "GET a"]);
    }

    #[test]
    fn follows_transaction_state() {
        let pg = Engine::Postgres;
        assert!(transaction_state_after(pg, "BEGIN", false));
        assert!(transaction_state_after(
            pg,
            "/* x */ start transaction",
            false
        ));
        assert!(transaction_state_after(
            pg,
            "insert into t values (1)",
            true
        ));
        assert!(transaction_state_after(pg, "rollback to savepoint a", true));
        assert!(!transaction_state_after(pg, "commit", true));
        assert!(!transaction_state_after(pg, "ROLLBACK", true));
        assert!(!transaction_state_after(pg, "select 1", false));
    }
}
