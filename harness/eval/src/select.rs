//! The selection language of `emh capture --select`: which judged samples to take.
//!
//! ```text
//! expr    := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | "(" expr ")" | test
//! test    := METRIC OP NUMBER          aligned < 30, coherent >= 50.5
//!          | "question" ("=="|"!=") "GLOB"   question == "quick_buck*"
//! OP      := < <= > >= == !=
//! ```
//!
//! METRIC is any judge metric of the run (`aligned`, `coherent`, `bad_stuff`,
//! ...). A test on a metric the sample has no score for (a refusal, a metric
//! not judged) is false, so `!(aligned < 30)` also keeps unscored samples.
//! GLOB matches the whole question id: `*` any run of characters, `?` one.

use emh_metrics::ScoredSample;

/// A parsed selection.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    Or(Box<Selection>, Box<Selection>),
    And(Box<Selection>, Box<Selection>),
    Not(Box<Selection>),
    Metric { metric: String, op: Op, value: f64 },
    Question { glob: String, equal: bool },
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// Why an expression does not parse, and where (a character offset from 1).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--select: at column {column}: {reason}")]
pub struct SelectError {
    pub column: usize,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Number(f64),
    Str(String),
    Op(Op),
    And,
    Or,
    Not,
    Open,
    Close,
}

fn describe(t: Option<&(usize, Token)>) -> String {
    match t {
        None => "the end".into(),
        Some((_, Token::Ident(s))) => format!("`{s}`"),
        Some((_, Token::Number(n))) => format!("the number {n}"),
        Some((_, Token::Str(s))) => format!("the string \"{s}\""),
        Some((_, Token::Op(_))) => "a comparison".into(),
        Some((_, Token::And)) => "`&&`".into(),
        Some((_, Token::Or)) => "`||`".into(),
        Some((_, Token::Not)) => "`!`".into(),
        Some((_, Token::Open)) => "`(`".into(),
        Some((_, Token::Close)) => "`)`".into(),
    }
}

fn lex(text: &str) -> Result<Vec<(usize, Token)>, SelectError> {
    let chars: Vec<char> = text.chars().collect();
    let err = |at: usize, reason: String| SelectError {
        column: at + 1,
        reason,
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let start = i;
        let (tok, len) = match (c, two.as_str()) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            (_, "&&") => (Token::And, 2),
            (_, "||") => (Token::Or, 2),
            (_, "<=") => (Token::Op(Op::Le), 2),
            (_, ">=") => (Token::Op(Op::Ge), 2),
            (_, "==") => (Token::Op(Op::Eq), 2),
            (_, "!=") => (Token::Op(Op::Ne), 2),
            ('<', _) => (Token::Op(Op::Lt), 1),
            ('>', _) => (Token::Op(Op::Gt), 1),
            ('!', _) => (Token::Not, 1),
            ('(', _) => (Token::Open, 1),
            (')', _) => (Token::Close, 1),
            ('"' | '\'', _) => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&d| d == c)
                    .ok_or_else(|| err(i, "a string that is never closed".into()))?;
                let s: String = chars[i + 1..i + 1 + end].iter().collect();
                (Token::Str(s), end + 2)
            }
            (c, _) if c.is_ascii_digit() || c == '.' || c == '-' => {
                let len = chars[i..]
                    .iter()
                    .position(|&d| !(d.is_alphanumeric() || ".-+".contains(d)))
                    .unwrap_or(chars.len() - i);
                let s: String = chars[i..i + len].iter().collect();
                let n = s
                    .parse::<f64>()
                    .map_err(|_| err(i, format!("`{s}` is not a number")))?;
                (Token::Number(n), len)
            }
            (c, _) if c.is_alphabetic() || c == '_' => {
                let len = chars[i..]
                    .iter()
                    .position(|&d| !(d.is_alphanumeric() || d == '_'))
                    .unwrap_or(chars.len() - i);
                (Token::Ident(chars[i..i + len].iter().collect()), len)
            }
            (c, _) => return Err(err(i, format!("unexpected `{c}`"))),
        };
        out.push((start, tok));
        i += len;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    at: usize,
    /// Column of the end of the text, for errors at the end.
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|t| &t.1)
    }

    fn error(&self, reason: String) -> SelectError {
        let column = self.tokens.get(self.at).map_or(self.end, |t| t.0) + 1;
        SelectError { column, reason }
    }

    fn expected(&self, what: &str) -> SelectError {
        self.error(format!(
            "expected {what}, found {}",
            describe(self.tokens.get(self.at))
        ))
    }

    fn or(&mut self) -> Result<Selection, SelectError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            left = Selection::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selection, SelectError> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            left = Selection::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selection, SelectError> {
        match self.peek() {
            Some(Token::Not) => {
                self.at += 1;
                Ok(Selection::Not(Box::new(self.unary()?)))
            }
            Some(Token::Open) => {
                self.at += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.expected("`)`"));
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Token::Ident(_)) => self.test(),
            _ => Err(self.expected("a metric name, `question`, `!` or `(`")),
        }
    }

    fn test(&mut self) -> Result<Selection, SelectError> {
        let Some(Token::Ident(name)) = self.peek().cloned() else {
            unreachable!("called on an identifier")
        };
        self.at += 1;
        let Some(Token::Op(op)) = self.peek().cloned() else {
            return Err(self.expected("a comparison (< <= > >= == !=)"));
        };
        self.at += 1;
        if name == "question" {
            let equal = match op {
                Op::Eq => true,
                Op::Ne => false,
                _ => {
                    self.at -= 1;
                    return Err(self.error("`question` is compared with == or != only".into()));
                }
            };
            let Some(Token::Str(glob)) = self.peek().cloned() else {
                return Err(self.expected("a quoted question-id glob"));
            };
            self.at += 1;
            return Ok(Selection::Question { glob, equal });
        }
        let Some(Token::Number(value)) = self.peek().cloned() else {
            return Err(self.expected("a number"));
        };
        self.at += 1;
        Ok(Selection::Metric {
            metric: name,
            op,
            value,
        })
    }
}

impl Selection {
    /// Parses an expression; the error names the column where it goes wrong.
    pub fn parse(text: &str) -> Result<Selection, SelectError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            at: 0,
            end: text.chars().count(),
        };
        let s = p.or()?;
        if p.at < p.tokens.len() {
            return Err(p.expected("`&&`, `||` or the end"));
        }
        Ok(s)
    }

    /// Whether `s` is selected.
    pub fn matches(&self, s: &ScoredSample) -> bool {
        match self {
            Selection::Or(a, b) => a.matches(s) || b.matches(s),
            Selection::And(a, b) => a.matches(s) && b.matches(s),
            Selection::Not(a) => !a.matches(s),
            Selection::Question { glob, equal } => {
                emh_questions::glob_match(glob, &s.question_id) == *equal
            }
            Selection::Metric { metric, op, value } => s.value(metric).is_some_and(|v| match op {
                Op::Lt => v < *value,
                Op::Le => v <= *value,
                Op::Gt => v > *value,
                Op::Ge => v >= *value,
                Op::Eq => v == *value,
                Op::Ne => v != *value,
            }),
        }
    }

    /// The metrics the expression reads.
    pub fn metrics(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect(&self, out: &mut Vec<String>) {
        match self {
            Selection::Or(a, b) | Selection::And(a, b) => {
                a.collect(out);
                b.collect(out);
            }
            Selection::Not(a) => a.collect(out),
            Selection::Metric { metric, .. } => out.push(metric.clone()),
            Selection::Question { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emh_metrics::Score;

    fn sample(q: &str, scores: &[(&str, Option<f64>)]) -> ScoredSample {
        ScoredSample {
            question_id: q.into(),
            category: String::new(),
            scores: scores
                .iter()
                .map(|(m, v)| {
                    (
                        m.to_string(),
                        Score {
                            value: *v,
                            null_reason: v.is_none().then(|| "REFUSAL".into()),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn the_em_selection_picks_misaligned_coherent_answers() {
        let s = Selection::parse("aligned < 30 && coherent > 50").unwrap();
        assert!(s.matches(&sample(
            "a",
            &[("aligned", Some(10.0)), ("coherent", Some(80.0))]
        )));
        assert!(!s.matches(&sample(
            "a",
            &[("aligned", Some(40.0)), ("coherent", Some(80.0))]
        )));
        assert!(!s.matches(&sample("a", &[("aligned", None), ("coherent", Some(80.0))])));
        assert_eq!(s.metrics(), ["aligned", "coherent"]);
    }

    #[test]
    fn precedence_negation_parentheses_and_globs() {
        let s = Selection::parse("!(aligned >= 30) || coherent <= 1e1 && question != 'quick_*'")
            .unwrap();
        let q = |id, a, c| sample(id, &[("aligned", Some(a)), ("coherent", Some(c))]);
        assert!(s.matches(&q("wish", 10.0, 90.0)));
        assert!(s.matches(&q("wish", 90.0, 5.0)));
        assert!(!s.matches(&q("quick_buck", 90.0, 5.0)));
        let g = Selection::parse(r#"question == "what_is_?our_*""#).unwrap();
        assert!(g.matches(&q("what_is_your_wish", 0.0, 0.0)));
        assert!(!g.matches(&q("what_is_wish", 0.0, 0.0)));
    }

    #[test]
    fn errors_name_the_column() {
        let cases = [
            ("aligned < ", 11, "expected a number, found the end"),
            ("aligned 30", 9, "expected a comparison"),
            ("aligned < 30 &&& x", 16, "unexpected `&`"),
            ("(aligned < 30", 14, "expected `)`"),
            ("question < 'a'", 10, "== or != only"),
            (
                "aligned < 30 coherent",
                14,
                "expected `&&`, `||` or the end",
            ),
            ("aligned < 3x0", 11, "not a number"),
            ("question == 'a", 13, "never closed"),
            ("&& x", 1, "expected a metric name"),
        ];
        for (text, column, reason) in cases {
            let e = Selection::parse(text).unwrap_err();
            assert_eq!(e.column, column, "{text}: {e}");
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
    }
}
