//! Arithmetic over one GPU's metrics at one instant: numbers, metric names, `+ - * /`, unary
//! minus and parentheses, nothing else.
//!
//! Written by hand rather than with `evalexpr` or `meval`: those are whole languages
//! (strings, assignments, functions, comparison operators) that the configuration would then
//! have to forbid piece by piece, and the grammar here is five lines. Parsing happens once,
//! when a rule is set or read; evaluation walks a small tree with no allocation.

use std::collections::BTreeSet;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal.
    Number(f64),
    /// A metric's value (a DCGM field or another derived metric).
    Metric(String),
    /// `-e`.
    Neg(Box<Expr>),
    /// `a op b`.
    Binary(Op, Box<Expr>, Box<Expr>),
}

/// The four operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

impl Expr {
    /// Parses `text`, with a message naming the position of the first mistake.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let mut p = Parser {
            text,
            tokens: tokenize(text)?,
            at: 0,
        };
        let e = p.sum()?;
        match p.tokens.get(p.at) {
            None => Ok(e),
            Some((pos, t)) => Err(format!("unexpected {t} at {pos} in {text:?}")),
        }
    }

    /// Every metric the expression reads.
    pub fn metrics(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut BTreeSet<&'a str>) {
        match self {
            Expr::Number(_) => {}
            Expr::Metric(m) => {
                out.insert(m.as_str());
            }
            Expr::Neg(e) => e.collect(out),
            Expr::Binary(_, a, b) => {
                a.collect(out);
                b.collect(out);
            }
        }
    }

    /// The value, reading metrics through `value_of`; `None` when a metric is missing.
    /// Division by zero gives an infinity or NaN, which callers refuse to store.
    pub fn eval(&self, value_of: &impl Fn(&str) -> Option<f64>) -> Option<f64> {
        Some(match self {
            Expr::Number(n) => *n,
            Expr::Metric(m) => value_of(m)?,
            Expr::Neg(e) => -e.eval(value_of)?,
            Expr::Binary(op, a, b) => {
                let (a, b) = (a.eval(value_of)?, b.eval(value_of)?);
                match op {
                    Op::Add => a + b,
                    Op::Sub => a - b,
                    Op::Mul => a * b,
                    Op::Div => a / b,
                }
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Name(String),
    Sym(char),
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Number(n) => write!(f, "number {n}"),
            Token::Name(n) => write!(f, "name {n:?}"),
            Token::Sym(c) => write!(f, "{c:?}"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if "+-*/()".contains(c) {
            chars.next();
            out.push((pos, Token::Sym(c)));
        } else if c.is_ascii_digit() || c == '.' {
            let mut s = String::new();
            while let Some((_, d)) = chars.next_if(|(_, d)| d.is_ascii_digit() || *d == '.') {
                s.push(d);
            }
            let n = s
                .parse::<f64>()
                .map_err(|_| format!("{s:?} at {pos} is not a number"))?;
            out.push((pos, Token::Number(n)));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut s = String::new();
            while let Some((_, d)) = chars.next_if(|(_, d)| d.is_ascii_alphanumeric() || *d == '_')
            {
                s.push(d);
            }
            out.push((pos, Token::Name(s)));
        } else {
            return Err(format!("unexpected {c:?} at {pos} in {text:?}"));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<(usize, Token)>,
    at: usize,
}

impl Parser<'_> {
    fn peek_sym(&self) -> Option<char> {
        match self.tokens.get(self.at) {
            Some((_, Token::Sym(c))) => Some(*c),
            _ => None,
        }
    }

    /// sum := product (('+' | '-') product)*
    fn sum(&mut self) -> Result<Expr, String> {
        let mut e = self.product()?;
        while let Some(c @ ('+' | '-')) = self.peek_sym() {
            self.at += 1;
            let op = if c == '+' { Op::Add } else { Op::Sub };
            e = Expr::Binary(op, Box::new(e), Box::new(self.product()?));
        }
        Ok(e)
    }

    /// product := unary (('*' | '/') unary)*
    fn product(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while let Some(c @ ('*' | '/')) = self.peek_sym() {
            self.at += 1;
            let op = if c == '*' { Op::Mul } else { Op::Div };
            e = Expr::Binary(op, Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    /// unary := '-' unary | number | name | '(' sum ')'
    fn unary(&mut self) -> Result<Expr, String> {
        let Some((pos, t)) = self.tokens.get(self.at).cloned() else {
            return Err(format!("{:?} ends where a value is expected", self.text));
        };
        self.at += 1;
        match t {
            Token::Sym('-') => Ok(Expr::Neg(Box::new(self.unary()?))),
            Token::Number(n) => Ok(Expr::Number(n)),
            Token::Name(n) => Ok(Expr::Metric(n)),
            Token::Sym('(') => {
                let e = self.sum()?;
                if self.peek_sym() != Some(')') {
                    return Err(format!(
                        "missing ')' for the '(' at {pos} in {:?}",
                        self.text
                    ));
                }
                self.at += 1;
                Ok(e)
            }
            t => Err(format!("unexpected {t} at {pos} in {:?}", self.text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str, vars: &[(&str, f64)]) -> Option<f64> {
        Expr::parse(text)
            .unwrap()
            .eval(&|m| vars.iter().find(|(k, _)| *k == m).map(|(_, v)| *v))
    }

    #[test]
    fn precedence_and_parentheses() {
        assert_eq!(eval("1 + 2 * 3", &[]), Some(7.0));
        assert_eq!(eval("(1 + 2) * 3", &[]), Some(9.0));
        assert_eq!(eval("10 - 4 - 3", &[]), Some(3.0), "left-associative");
        assert_eq!(eval("8 / 4 / 2", &[]), Some(1.0));
        assert_eq!(eval("-2 * -(3)", &[]), Some(6.0));
        assert_eq!(eval("0.5*4", &[]), Some(2.0));
    }

    #[test]
    fn memory_used_percent() {
        let text = "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) * 100";
        let e = Expr::parse(text).unwrap();
        assert_eq!(
            e.metrics().into_iter().collect::<Vec<_>>(),
            ["DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED"]
        );
        let v = eval(
            text,
            &[("DCGM_FI_DEV_FB_USED", 20.0), ("DCGM_FI_DEV_FB_FREE", 60.0)],
        );
        assert_eq!(v, Some(25.0));
        assert_eq!(eval(text, &[("DCGM_FI_DEV_FB_USED", 20.0)]), None);
    }

    #[test]
    fn mistakes_are_named() {
        for (bad, says) in [
            ("", "ends where a value"),
            ("1 +", "ends where a value"),
            ("(1 + 2", "missing ')'"),
            ("1 2", "unexpected number 2 at 2"),
            ("a % b", "unexpected '%'"),
            ("1..2", "not a number"),
            ("a )", "unexpected ')'"),
        ] {
            let e = Expr::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
