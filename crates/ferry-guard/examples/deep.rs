fn main() {
    let text = std::fs::read_to_string(std::env::args().nth(1).unwrap()).unwrap();
    let stack: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let what = std::env::args().nth(3).unwrap();
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let e = ferry_core::Engine::Postgres;
            match what.as_str() {
                "parse" => {
                    let r = sqlparser::parser::Parser::parse_sql(
                        &sqlparser::dialect::PostgreSqlDialect {},
                        &text,
                    );
                    println!("parsed ok={} {:?}", r.is_ok(), r.err());
                }
                "classify" => {
                    println!(
                        "{:?}",
                        ferry_guard::classify_script(e, &text)
                            .iter()
                            .map(|c| (c.class, c.reasons.clone()))
                            .collect::<Vec<_>>()
                    );
                }
                _ => {
                    println!("{:?}", ferry_guard::plan_masking(e, &text, &|_| None));
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
