//! The bench's exports to JavaScript (wasm-bindgen), which benches/wasm-push/bench.mjs calls
//! under Node: one [`PushBench`] per fixture; errors are thrown as strings.

use wasm_bindgen::prelude::wasm_bindgen;

use crate::{Bench, Fixture};

/// A [`Bench`] for JavaScript.
#[wasm_bindgen]
pub struct PushBench(Bench);

#[wasm_bindgen]
impl PushBench {
    /// The bench of the fixture named `fixture` (`beacon` or `mixed`).
    #[wasm_bindgen(constructor)]
    pub fn new(fixture: &str) -> Result<PushBench, String> {
        Ok(PushBench(Bench::new(Fixture::parse(fixture)?)?))
    }

    /// [`Bench::run`].
    pub fn run(&mut self, pushes: u32) -> Result<(), String> {
        self.0.run(pushes)
    }

    /// [`Bench::fold`].
    pub fn fold(&mut self) -> Result<usize, String> {
        self.0.fold()
    }

    /// [`Bench::check`].
    pub fn check(&self) -> Result<String, String> {
        self.0.check()
    }

    /// [`Bench::body_bytes`].
    #[wasm_bindgen(js_name = bodyBytes)]
    pub fn body_bytes(&self) -> usize {
        self.0.body_bytes()
    }
}
