//! A job request (`POST /v1/fine_tuning/jobs`, and the same body at `POST /v1/tuna/estimates`)
//! checked against [`SETTINGS`]: every invalid field is reported at once, each error naming the
//! field as it was sent (`hyperparameters.n_epochs` when the deprecated top-level object was
//! used) and the limit it broke. The result is a tree of every setting at its canonical path,
//! defaults filled in and `auto` resolved where the request alone decides; the rest (epochs and
//! batch size from the dataset, the model's context) is resolved when the job is planned.

use serde_json::{Map, Value, json};

use super::settings::{AutoRule, Kind, SETTINGS, Setting};
use crate::error::{ApiError, FieldError};
use crate::spec::JobSpec;

/// A job request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidJobRequest {
    /// Every applicable setting at its canonical path; `"auto"` left only for rules that need
    /// the dataset.
    tree: Value,
    /// The learning rate was `auto`: the plan scales the model's own recommendation instead of
    /// the generic base ([`tuna_train::default_learning_rate`]).
    learning_rate_auto: bool,
}

/// Top-level keys the API accepts besides the settings: OpenAI's `integrations` (none are
/// supported; an empty list or `null` is accepted).
const INTEGRATIONS: &str = "integrations";

/// Most errors one answer lists (a body of thousands of unknown keys must not make a huge answer).
const MAX_ERRORS: usize = 50;

/// Longest piece of a sent value quoted back in a message.
const QUOTE_CHARS: usize = 60;

/// `value` as JSON, cut to a readable length.
fn quote(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= QUOTE_CHARS {
        text
    } else {
        let cut: String = text.chars().take(QUOTE_CHARS).collect();
        format!("{cut}…")
    }
}

/// A number as people write it: `100`, `0.5`, `1e-8`.
fn show(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:?}")
    }
}

fn get<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(tree, |v, key| v.get(key))
}

fn set(tree: &mut Value, path: &str, value: Value) {
    let mut cur = tree;
    let mut parts = path.split('.').peekable();
    while let Some(key) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else { return };
        if parts.peek().is_none() {
            map.insert(key.to_string(), value);
            return;
        }
        cur = map
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Every object path on the way to a setting (`tuna`, `tuna.lora`, `method.supervised`, ...).
fn containers() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in SETTINGS {
        for p in std::iter::once(s.param).chain(s.aliases.iter().copied()) {
            let parts: Vec<&str> = p.split('.').collect();
            for n in 1..parts.len() {
                let c = parts[..n].join(".");
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// Keys the request sent that are no setting (typos, settings of other methods).
fn unknown_keys(body: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    let containers = containers();
    let mut stack: Vec<(String, &Map<String, Value>)> = vec![(String::new(), body)];
    while let Some((prefix, map)) = stack.pop() {
        for (key, value) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if path == INTEGRATIONS || super::settings::find(&path).is_some() {
                continue;
            }
            if containers.contains(&path) {
                match value {
                    Value::Object(inner) => stack.push((path, inner)),
                    Value::Null => {}
                    other => errors.push(FieldError::new(
                        &path,
                        format!("`{path}` must be an object, got {}", quote(other)),
                    )),
                }
                continue;
            }
            errors.push(FieldError::new(
                &path,
                format!(
                    "`{path}` is not a job setting; `GET /v1/tuna/job_settings` lists them all"
                ),
            ));
        }
    }
    errors.sort_by(|a, b| a.param.cmp(&b.param));
}

/// The value the request sent for `s` and the spelling it used; an error when the canonical
/// spelling and an alias disagree.
fn sent<'a>(body: &'a Value, s: &Setting) -> Result<Option<(&'static str, &'a Value)>, FieldError> {
    let canonical = get(body, s.param).filter(|v| !v.is_null());
    for alias in s.aliases {
        if let Some(v) = get(body, alias).filter(|v| !v.is_null()) {
            match canonical {
                Some(c) if c != v => {
                    return Err(FieldError::new(
                        alias,
                        format!(
                            "`{alias}` ({}) disagrees with `{}` ({}); send only `{}`",
                            quote(v),
                            s.param,
                            quote(c),
                            s.param
                        ),
                    ));
                }
                Some(_) => {}
                None => return Ok(Some((alias, v))),
            }
        }
    }
    Ok(canonical.map(|v| (s.param, v)))
}

/// Checks one sent value against its kind; the normalized value.
fn check_value(s: &Setting, param: &str, v: &Value) -> Result<Value, FieldError> {
    let or_auto = if s.auto.is_some() { " or \"auto\"" } else { "" };
    if s.auto.is_some() && v.as_str() == Some("auto") {
        return Ok(json!("auto"));
    }
    let fail = |what: String| Err(FieldError::new(param, what));
    match s.kind {
        Kind::Integer { min, max } => {
            let n = v.as_i64().or_else(|| {
                v.as_f64()
                    .filter(|x| x.fract() == 0.0 && x.abs() < 9e15)
                    .map(|x| x as i64)
            });
            match n {
                Some(n) if (min..=max).contains(&n) => Ok(json!(n)),
                Some(n) => fail(format!(
                    "`{param}` must be between {min} and {max}, got {n}"
                )),
                None => fail(format!(
                    "`{param}` must be an integer between {min} and {max}{or_auto}, got {}",
                    quote(v)
                )),
            }
        }
        Kind::Number {
            min,
            max,
            exclusive_min,
            exclusive_max,
        } => {
            let lo = if exclusive_min { ">" } else { ">=" };
            let hi = if exclusive_max { "<" } else { "<=" };
            let bound = format!("{lo} {} and {hi} {}", show(min), show(max));
            let Some(x) = v.as_f64() else {
                return fail(format!(
                    "`{param}` must be a number {bound}{or_auto}, got {}",
                    quote(v)
                ));
            };
            let above = if exclusive_min { x > min } else { x >= min };
            let below = if exclusive_max { x < max } else { x <= max };
            if x.is_finite() && above && below {
                Ok(json!(x))
            } else {
                fail(format!("`{param}` must be {bound}, got {}", show(x)))
            }
        }
        Kind::Text { max_chars, id_safe } => {
            let Some(text) = v.as_str() else {
                return fail(format!("`{param}` must be a string, got {}", quote(v)));
            };
            let n = text.chars().count();
            if n == 0 || text.trim().is_empty() {
                return fail(format!("`{param}` must not be empty"));
            }
            if n > max_chars {
                return fail(format!(
                    "`{param}` must be at most {max_chars} characters, got {n}"
                ));
            }
            if id_safe
                && !text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return fail(format!(
                    "`{param}` may only hold letters, digits, `.`, `_` or `-`, got {}",
                    quote(v)
                ));
            }
            Ok(json!(text))
        }
        Kind::Enum(choices) => match v.as_str() {
            Some(c) if choices.contains(&c) => Ok(json!(c)),
            _ => fail(format!(
                "`{param}` must be one of {}, got {}",
                choices
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                quote(v)
            )),
        },
        Kind::List { choices, all } => {
            let expected = || {
                format!(
                    "`{param}` must be a list of {} or \"{all}\", got {}",
                    choices.join(", "),
                    quote(v)
                )
            };
            match v {
                Value::String(s) if s == all || s == "all" => Ok(json!(choices)),
                Value::Array(items) if !items.is_empty() => {
                    let mut out: Vec<&str> = Vec::new();
                    for item in items {
                        match item.as_str().filter(|i| choices.contains(i)) {
                            Some(i) if !out.contains(&i) => out.push(i),
                            Some(_) => {}
                            None => {
                                return fail(format!(
                                    "`{param}` has an unknown module {}; use {} or \"{all}\"",
                                    quote(item),
                                    choices.join(", ")
                                ));
                            }
                        }
                    }
                    Ok(json!(out))
                }
                _ => fail(expected()),
            }
        }
        Kind::Metadata => {
            let ok = v.as_object().is_some_and(|o| {
                o.len() <= 16
                    && o.iter()
                        .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512))
            });
            if ok {
                Ok(v.clone())
            } else {
                fail(format!(
                    "`{param}` must be an object of at most 16 string values (keys up to 64, values up to 512 characters)"
                ))
            }
        }
    }
}

/// Which value of a deciding setting (`method.type`, `tuna.method`) a setting needs, when the
/// tree holds another.
fn inapplicable(s: &Setting, tree: &Value) -> Option<(&'static str, &'static [&'static str])> {
    let method = get(tree, "method.type").and_then(Value::as_str);
    if let Some(m) = method
        && !s.methods.contains(&m)
    {
        return Some(("method.type", s.methods));
    }
    let tuning = get(tree, "tuna.method").and_then(Value::as_str);
    if !s.tuna_methods.is_empty()
        && let Some(t) = tuning
        && !s.tuna_methods.contains(&t)
    {
        return Some(("tuna.method", s.tuna_methods));
    }
    None
}

/// Checks a request body against every setting; all the problems at once.
pub fn check_job_request(body: &Value) -> Result<ValidJobRequest, Vec<FieldError>> {
    let Some(map) = body.as_object() else {
        return Err(vec![FieldError::new(
            "",
            format!("the body must be a JSON object, got {}", quote(body)),
        )]);
    };
    let mut errors = Vec::new();
    unknown_keys(map, &mut errors);
    if let Some(v) = map.get(INTEGRATIONS)
        && !(v.is_null() || v.as_array().is_some_and(Vec::is_empty))
    {
        errors.push(FieldError::new(
            INTEGRATIONS,
            "`integrations` are not supported by this server; send none".into(),
        ));
    }
    let mut tree = Value::Object(Map::new());
    let mut learning_rate_auto = false;
    for s in SETTINGS {
        let sent = match sent(body, s) {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Some((decider, needs)) = inapplicable(s, &tree) {
            if let Some((param, _)) = sent {
                errors.push(FieldError::new(
                    param,
                    format!(
                        "`{param}` only applies when `{decider}` is {}",
                        needs
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                ));
            }
            continue;
        }
        let value = match sent {
            Some((param, v)) => match check_value(s, param, v) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
            None if s.required => {
                errors.push(FieldError::new(
                    s.param,
                    format!("`{}` is required", s.param),
                ));
                continue;
            }
            None => {
                // Defaults are normalized like sent values (`all-linear` becomes the list).
                let d = s.default.to_json();
                match d.as_str() {
                    Some(text) if text != "auto" => check_value(s, s.param, &d).unwrap_or(d),
                    _ => d,
                }
            }
        };
        if s.param == "tuna.learning_rate" && value.as_str() == Some("auto") {
            learning_rate_auto = true;
        }
        let value = match (value.as_str() == Some("auto"), s.auto) {
            (true, Some((AutoRule::Settings(rule), _))) => rule(&tree),
            _ => value,
        };
        set(&mut tree, s.param, value);
    }
    if errors.is_empty() {
        return Ok(ValidJobRequest {
            tree,
            learning_rate_auto,
        });
    }
    if errors.len() > MAX_ERRORS {
        let more = errors.len() - MAX_ERRORS;
        errors.truncate(MAX_ERRORS);
        if let Some(last) = errors.last_mut() {
            last.message
                .push_str(&format!(" ({more} more invalid fields are not listed)"));
        }
    }
    Err(errors)
}

/// [`check_job_request`] as the API answers it: a 400 listing every invalid field.
pub fn validate_job_request(body: &Value) -> Result<ValidJobRequest, ApiError> {
    check_job_request(body).map_err(ApiError::InvalidFields)
}

impl ValidJobRequest {
    fn text(&self, param: &str) -> Option<&str> {
        get(&self.tree, param).and_then(Value::as_str)
    }

    /// Whether the request left the learning rate to the server.
    pub fn learning_rate_auto(&self) -> bool {
        self.learning_rate_auto
    }

    pub fn model(&self) -> &str {
        self.text("model").unwrap_or_default()
    }

    /// `method.type`: `supervised` or `dpo`.
    pub fn method_type(&self) -> &str {
        self.text("method.type").unwrap_or("supervised")
    }

    /// `tuna.method`: `lora` or `full`.
    pub fn tuning(&self) -> &str {
        self.text("tuna.method").unwrap_or("lora")
    }

    pub fn training_file(&self) -> &str {
        self.text("training_file").unwrap_or_default()
    }

    pub fn validation_file(&self) -> Option<&str> {
        self.text("validation_file")
    }

    pub fn suffix(&self) -> Option<&str> {
        self.text("suffix")
    }

    pub fn seed(&self) -> i64 {
        get(&self.tree, "seed")
            .and_then(Value::as_i64)
            .unwrap_or_default()
    }

    pub fn metadata(&self) -> Option<&Value> {
        get(&self.tree, "metadata").filter(|m| !m.is_null())
    }

    /// The requested sequence length, before the model's context caps it.
    pub fn max_seq_len(&self) -> i64 {
        get(&self.tree, "tuna.max_seq_len")
            .and_then(Value::as_i64)
            .unwrap_or(2048)
    }

    /// The job's settings once the dataset is known: `auto` rules that need the example count
    /// resolve, and the sequence length is capped at the model's context.
    pub fn resolve(&self, examples: i64, model_context: i64) -> Result<JobSpec, ApiError> {
        let mut tree = self.tree.clone();
        for s in SETTINGS {
            if let Some((AutoRule::Dataset(rule), _)) = s.auto
                && get(&tree, s.param).and_then(Value::as_str) == Some("auto")
            {
                set(&mut tree, s.param, json!(rule(examples)));
            }
        }
        set(
            &mut tree,
            "tuna.max_seq_len",
            json!(self.max_seq_len().min(model_context.max(1))),
        );
        let spec = json!({"method": tree["method"], "tuna": tree["tuna"]});
        serde_json::from_value(spec)
            .map_err(|e| ApiError::internal(format!("resolved job settings do not parse: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Tuning;

    fn check(extra: Value) -> Result<ValidJobRequest, Vec<FieldError>> {
        let mut body = json!({"model": "demo", "training_file": "file-a"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        check_job_request(&body)
    }

    fn params(extra: Value) -> Vec<String> {
        check(extra)
            .unwrap_err()
            .into_iter()
            .map(|e| e.param)
            .collect()
    }

    #[test]
    fn defaults_and_auto_resolve() {
        let v = check(json!({
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}},
            "tuna": {"lora": {"rank": 4}, "max_steps": 4}
        }))
        .unwrap();
        let spec = v.resolve(1000, 32_768).unwrap();
        let hp = spec.hyperparameters();
        assert_eq!(
            (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier),
            (2, 2, 1.0)
        );
        let lora = spec.tuna.lora.unwrap();
        assert_eq!(
            (lora.rank, lora.alpha, lora.target_modules.len()),
            (4, 8.0, 7)
        );
        assert_eq!(spec.tuna.max_steps, Some(4));
        assert_eq!(spec.tuna.method, Tuning::Lora);
        assert!((spec.tuna.learning_rate - 1e-4).abs() < 1e-12);
        assert_eq!(spec.tuna.max_seq_len, 2048);
        // The model's context caps the sequence length; a full run has no LoRA settings.
        let full = check(
            json!({"tuna": {"method": "full"}, "hyperparameters": {"learning_rate_multiplier": 2}}),
        )
        .unwrap();
        let spec = full.resolve(10, 512).unwrap();
        assert_eq!(spec.tuna.max_seq_len, 512);
        assert!(spec.tuna.lora.is_none());
        assert!((spec.tuna.learning_rate - 2e-5).abs() < 1e-15);
        assert_eq!(spec.hyperparameters().n_epochs, 10);
        assert_eq!(full.seed(), 42, "the default seed, as `tuna train`'s");
    }

    #[test]
    fn dpo_takes_openai_method_object_with_auto_values() {
        // Everything `auto`: beta 0.1, epochs and batch size from the pair count.
        let v = check(json!({
            "method": {"type": "dpo", "dpo": {"hyperparameters": {
                "beta": "auto", "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}}}
        }))
        .unwrap();
        assert_eq!(v.method_type(), "dpo");
        let spec = v.resolve(40, 32_768).unwrap();
        assert_eq!(spec.method.dpo_beta(), Some(0.1));
        let hp = spec.hyperparameters();
        assert_eq!(
            (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier),
            (3, 1, 1.0)
        );
        assert!((spec.tuna.learning_rate - 1e-4).abs() < 1e-12);
        // Sent values are kept; the multiplier scales the learning rate as for supervised runs.
        let v = check(json!({
            "method": {"type": "dpo", "dpo": {"hyperparameters": {
                "beta": 0.5, "n_epochs": 4, "batch_size": 2, "learning_rate_multiplier": 0.5}}},
            "tuna": {"method": "full"}
        }))
        .unwrap();
        let spec = v.resolve(10, 512).unwrap();
        assert_eq!(spec.method.dpo_beta(), Some(0.5));
        let hp = spec.hyperparameters();
        assert_eq!((hp.n_epochs, hp.batch_size), (4, 2));
        assert!((spec.tuna.learning_rate - 5e-6).abs() < 1e-15);
        // No `dpo` object at all: every default.
        let spec = check(json!({"method": {"type": "dpo"}}))
            .unwrap()
            .resolve(500, 512)
            .unwrap();
        assert_eq!(spec.method.dpo_beta(), Some(0.1));
        assert_eq!(spec.method.type_name(), "dpo");
    }

    #[test]
    fn every_invalid_field_is_listed_under_the_name_it_was_sent() {
        let errors = check(json!({
            "hyperparameters": {"n_epochs": 0, "learning_rate_multiplier": 1e-300},
            "tuna": {"lora": {"rank": "big", "target_modules": ["qkv"]}, "warmup_ratio": 1.5, "lora_rank": 8},
            "suffix": "a:b"
        }))
        .unwrap_err();
        let by_param: std::collections::HashMap<&str, &str> = errors
            .iter()
            .map(|e| (e.param.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            by_param["hyperparameters.n_epochs"],
            "`hyperparameters.n_epochs` must be between 1 and 50, got 0"
        );
        assert_eq!(
            by_param["hyperparameters.learning_rate_multiplier"],
            "`hyperparameters.learning_rate_multiplier` must be >= 0.001 and <= 100, got 1e-300"
        );
        assert_eq!(
            by_param["tuna.lora.rank"],
            "`tuna.lora.rank` must be an integer between 1 and 1024, got \"big\""
        );
        assert!(by_param["tuna.lora.target_modules"].contains("unknown module \"qkv\""));
        assert!(by_param["tuna.warmup_ratio"].contains(">= 0 and < 1, got 1.5"));
        assert!(by_param["tuna.lora_rank"].contains("is not a job setting"));
        assert!(by_param["suffix"].contains("letters, digits"));
        assert_eq!(errors.len(), 7, "{errors:?}");
        // Every param but the unknown key is a setting of the table (or an alias of one).
        for e in &errors {
            if e.param != "tuna.lora_rank" {
                assert!(
                    super::super::settings::find(&e.param).is_some(),
                    "{}",
                    e.param
                );
            }
        }
    }

    #[test]
    fn type_errors_and_method_rules_name_the_field() {
        assert_eq!(
            params(
                json!({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "three"}}}})
            ),
            ["method.supervised.hyperparameters.n_epochs"]
        );
        let e = check(json!({"hyperparameters": {"batch_size": [1]}})).unwrap_err();
        assert_eq!(
            e[0].message,
            "`hyperparameters.batch_size` must be an integer between 1 and 256 or \"auto\", got [1]"
        );
        assert_eq!(params(json!({"method": {"type": "ppo"}})), ["method.type"]);
        // Each method's hyperparameters belong to it alone.
        assert_eq!(
            params(
                json!({"method": {"type": "dpo", "supervised": {"hyperparameters": {"n_epochs": 2}}}})
            ),
            ["method.supervised.hyperparameters.n_epochs"]
        );
        assert_eq!(
            params(json!({"method": {"type": "dpo"}, "hyperparameters": {"n_epochs": 2}})),
            ["hyperparameters.n_epochs"]
        );
        assert_eq!(
            params(
                json!({"method": {"type": "supervised", "dpo": {"hyperparameters": {"beta": 0.2}}}})
            ),
            ["method.dpo.hyperparameters.beta"]
        );
        let e = check(json!({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}))
            .unwrap_err();
        assert_eq!(
            e[0].message,
            "`method.dpo.hyperparameters.beta` must be > 0 and <= 2, got 0"
        );
        assert_eq!(
            params(json!({"tuna": {"method": "full", "lora": {"rank": 2}}})),
            ["tuna.lora.rank"]
        );
        assert_eq!(
            params(json!({"tuna": {"method": "qlora"}})),
            ["tuna.method"]
        );
        assert_eq!(params(json!({"model": null})), ["model"]);
        assert_eq!(params(json!({"tuna": 3})), ["tuna"]);
        assert_eq!(
            params(
                json!({"hyperparameters": {"n_epochs": 2}, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}})
            ),
            ["hyperparameters.n_epochs"]
        );
        // The same value under both spellings is fine.
        assert!(check(json!({"hyperparameters": {"n_epochs": 3}, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}})).is_ok());
        assert_eq!(
            params(json!({"integrations": [{"type": "wandb"}]})),
            ["integrations"]
        );
        let long = "x".repeat(10_000);
        let e = check(json!({"tuna": {"name": 5, "method": long}})).unwrap_err();
        assert!(e.iter().all(|e| e.message.len() < 200), "{e:?}");
    }
}
