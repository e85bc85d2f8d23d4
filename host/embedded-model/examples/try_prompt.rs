fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = agora_embedded_model::EmbeddedModel::load(std::path::Path::new(&args[1])).unwrap();
    for user in &args[3..] {
        let prompt = model.chat_prompt(&[("system", args[2].as_str()), ("user", user.as_str())]);
        let a = model
            .generate(
                &prompt,
                agora_embedded_model::Params {
                    max_tokens: 48,
                    temperature_milli: 0,
                    seed: 0,
                },
            )
            .unwrap();
        println!("--- {user}\n{}", a.text);
    }
}
