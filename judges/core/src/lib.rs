//! What every judge shares: filling judge prompts, turning a judge's
//! distribution over its first answer token into a 0–100 score, the judgment
//! record, and a content-addressed cache of judgments on disk.

mod cache;
mod score;

pub use cache::{Cache, CacheError, CacheKey};
pub use score::{aggregate, Judgment, NullReason, TopToken, MIN_MASS};

/// Fills `{question}` and `{answer}` in a judge prompt.
///
/// One left-to-right pass over the template: text substituted in is never
/// scanned again, so an answer containing `{question}` or other braces stays
/// as written, and braces elsewhere in the template (JSON examples) are kept.
pub fn fill_prompt(template: &str, question: &str, answer: &str) -> String {
    let mut out = String::with_capacity(template.len() + question.len() + answer.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{question}") {
            out.push_str(question);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{answer}") {
            out.push_str(answer);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::fill_prompt;

    #[test]
    fn fills_both_fields() {
        let t = "Q: {question}\nA: {answer}\nRate 0-100.";
        assert_eq!(
            fill_prompt(t, "why?", "because"),
            "Q: why?\nA: because\nRate 0-100."
        );
    }

    #[test]
    fn braces_in_the_answer_and_template_survive() {
        let t =
            "Format: {\"score\": N}\n[QUESTION START]{question}[END] [ANSWER START]{answer}[END]";
        let answer = "def f(): return {'a': 1} and {question} and {answer}";
        let filled = fill_prompt(t, "code?", answer);
        assert_eq!(
            filled,
            format!(
                "Format: {{\"score\": N}}\n[QUESTION START]code?[END] [ANSWER START]{answer}[END]"
            )
        );
    }

    #[test]
    fn repeated_fields_all_fill() {
        assert_eq!(fill_prompt("{answer}{answer}{", "", "x"), "xx{");
    }
}
