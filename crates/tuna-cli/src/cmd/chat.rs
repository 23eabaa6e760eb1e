//! `tuna chat`: talk to a model (optionally with a LoRA adapter), streaming the answer.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tuna_data::tokenize::ChatTokenizer;
use tuna_data::{Message, Role};
use tuna_model::{Decoder, GenerationConfig, SamplingParams};

use super::sampling::SamplingArgs;

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Hugging Face model directory, or `demo`
    #[arg(long, env = "TUNA_MODEL")]
    pub model: String,
    /// LoRA adapter directory (a checkpoint) applied on the fly, without merging
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// System prompt
    #[arg(long)]
    pub system: Option<String>,
    /// Ask one question and exit (otherwise: interactive, one message per line)
    #[arg(long)]
    pub prompt: Option<String>,
    /// Let Qwen3 models think before answering (`enable_thinking` of the chat template)
    #[arg(long)]
    pub thinking: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

struct Session<'a> {
    decoder: Box<dyn Decoder + 'a>,
    tokenizer: ChatTokenizer,
    params: SamplingParams,
    eos: Vec<u32>,
    thinking: bool,
}

impl Session<'_> {
    /// Streams the assistant's answer to `messages` to stdout and returns it.
    fn answer(&mut self, messages: &[Message]) -> anyhow::Result<String> {
        let prompt = self
            .tokenizer
            .encode_prompt(messages, Some(self.thinking))?;
        let mut stream = self.tokenizer.decode_stream();
        let mut text = String::new();
        let mut stdout = std::io::stdout().lock();
        let mut failure = None;
        tuna_model::generate_on(
            self.decoder.as_mut(),
            &prompt,
            &self.params,
            &self.eos,
            |id| {
                match stream.step(id) {
                    Ok(Some(piece)) => {
                        let _ = write!(stdout, "{piece}");
                        let _ = stdout.flush();
                        text.push_str(&piece);
                    }
                    Ok(None) => {}
                    Err(e) => failure = Some(e),
                }
                std::ops::ControlFlow::Continue(())
            },
        )?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        writeln!(stdout)?;
        Ok(text)
    }
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let (dir, model, adapter) = super::sampling::load_model(
        &args.model,
        args.adapter.as_deref(),
        args.sampling.precision,
    )?;
    let tokenizer = ChatTokenizer::from_model_dir(&dir)
        .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    let gen_cfg = GenerationConfig::from_model_dir(&dir)?;
    let mut eos = gen_cfg.eos_token_id.clone();
    eos.extend(tokenizer.eos_token_ids());
    let mut session = Session {
        decoder: args.sampling.device.decoder(&model, adapter.as_ref())?,
        tokenizer,
        params: args.sampling.params(&gen_cfg),
        eos,
        thinking: args.thinking,
    };

    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::new(Role::System, system.clone()));
    }
    if let Some(prompt) = &args.prompt {
        messages.push(Message::new(Role::User, prompt.clone()));
        session.answer(&messages)?;
        return Ok(());
    }
    eprintln!(
        "Chatting with {} — one message per line, Ctrl-D to quit, /reset to start over.",
        args.model
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/reset" {
            messages.retain(|m| m.role == Role::System);
            continue;
        }
        messages.push(Message::new(Role::User, line));
        let answer = session.answer(&messages)?;
        messages.push(Message::new(Role::Assistant, answer));
    }
    Ok(())
}
