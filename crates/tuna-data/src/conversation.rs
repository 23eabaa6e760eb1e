//! A checked conversation: the typed value every later step (template, masks, packing) takes.

use serde::{Deserialize, Serialize};

/// Who speaks a message. Only these three roles are accepted in training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message with its content already flattened to text (list-of-parts content is joined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// For assistant messages: whether the model is trained on this message
    /// (OpenAI's optional `"weight": 0|1`, default 1). Always `true` for other roles, which are never trained.
    #[serde(default = "default_trained")]
    pub trained: bool,
}

fn default_trained() -> bool {
    true
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            trained: true,
        }
    }
}

/// A conversation that passed the structural check: at most one system message and only
/// first, at least one user and one assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

impl Conversation {
    /// The system prompt, when the conversation starts with one.
    pub fn system_prompt(&self) -> Option<&str> {
        self.messages
            .first()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
    }
}

/// A checked preference pair (OpenAI's preference fine-tuning format, used for DPO): a prompt and
/// two answers to its last user message, the preferred one and the non-preferred one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceExample {
    /// `input.messages`: an optional system message first, then user/assistant turns ending with a
    /// user message. Its assistant messages are context: they are never trained.
    pub input: Vec<Message>,
    /// The content of `preferred_output[0]` (an assistant message).
    pub preferred: String,
    /// The content of `non_preferred_output[0]`.
    pub non_preferred: String,
}

impl PreferenceExample {
    /// The prompt followed by the preferred answer, the only trained message.
    pub fn chosen(&self) -> Conversation {
        self.with_answer(&self.preferred)
    }

    /// The prompt followed by the non-preferred answer, the only trained message.
    pub fn rejected(&self) -> Conversation {
        self.with_answer(&self.non_preferred)
    }

    fn with_answer(&self, answer: &str) -> Conversation {
        let mut messages: Vec<Message> = self
            .input
            .iter()
            .map(|m| Message {
                // Other roles keep `true`: they are never trained anyway.
                trained: m.role != Role::Assistant,
                ..m.clone()
            })
            .collect();
        messages.push(Message::new(Role::Assistant, answer));
        Conversation { messages }
    }
}
