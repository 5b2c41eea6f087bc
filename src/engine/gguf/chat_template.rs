//! Rendering a model's chat template (the Jinja source in the GGUF's `tokenizer.chat_template`)
//! with minijinja, configured as Hugging Face's `apply_chat_template` configures Jinja2
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`), so a conversation
//! becomes the same prompt text it would with transformers.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::engine::EngineError;

/// One message of a conversation, as the template sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or what the template accepts).
    pub role: String,
    /// The message text.
    pub content: String,
}

/// A compiled chat template and the special tokens templates may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts templates see under those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| EngineError::Tokenizer(format!("chat template does not compile: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The prompt for `messages` in pieces: `(text, true)` for the template's own text,
    /// `(content, false)` for each message's content, in order, so that the tokenizer can parse
    /// special tokens in the first and not in the second. `None` when the template does not
    /// copy each content verbatim and exactly once (then the pieces cannot be told apart).
    pub fn render_pieces(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Option<Vec<(String, bool)>>, String> {
        // Placeholders no user can write: private-use markers around a per-render nonce.
        let nonce: u64 = rand::random();
        let marker = |i: usize| format!("\u{F0000}{nonce:016x}:{i}\u{F0001}");
        let masked: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage {
                role: m.role.clone(),
                content: marker(i),
            })
            .collect();
        let text = self.render(&masked, add_generation_prompt)?;
        let mut pieces = Vec::with_capacity(2 * messages.len() + 1);
        let mut rest = text.as_str();
        for (i, m) in messages.iter().enumerate() {
            let mark = marker(i);
            let Some(at) = rest.find(&mark) else {
                return Ok(None);
            };
            pieces.push((rest[..at].to_string(), true));
            pieces.push((m.content.clone(), false));
            rest = &rest[at + mark.len()..];
        }
        if rest.contains(&format!("\u{F0000}{nonce:016x}:")) {
            return Ok(None);
        }
        pieces.push((rest.to_string(), true));
        Ok(Some(pieces))
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt`. A template error (e.g. one that rejects the roles) is returned as
    /// its message, for a 400.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid messages").to_string(),
                _ => format!("chat template failed: {e}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_adds_the_default_system_prompt_and_the_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let text = t.render(&[msg("user", "Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")], false)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0]['role'] == 'bad' %}{{ raise_exception('roles must alternate') }}{% endif %}{{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&[msg("user", "  hi ")], false).unwrap(), "HI");
        assert_eq!(
            t.render(&[msg("bad", "x")], false).unwrap_err(),
            "roles must alternate"
        );
    }

    #[test]
    fn a_broken_template_is_a_load_error() {
        let err = ChatTemplate::new("{% for %}", "", "").unwrap_err();
        assert!(err.to_string().contains("chat template"), "{err}");
    }
}
