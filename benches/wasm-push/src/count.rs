//! Counts the wasm instructions a module executes: [`instrument`] adds a mutable `i64` global,
//! exported as [`COUNTER`], and at the start of every straight-line run of each function's code
//! adds the number of instructions in that run to it. A run ends after any instruction that
//! enters, leaves or branches within a block (`block`, `loop`, `if`, `else`, `end`, `br*`,
//! `return`, `unreachable`, the exception instructions), so a run's instructions are all
//! executed whenever its first is, up to a trap. Every instruction counts one, `local.get` and
//! `end` included; the counter's own instructions are not counted.
//!
//! The instrumented module runs under V8 like the original, only slower: read the counter
//! before and after a call for the instructions that call executed.

use std::convert::Infallible;

use wasm_encoder::reencode::{Error, Reencode, utils};
use wasm_encoder::{
    CodeSection, ConstExpr, ExportKind, ExportSection, Function, GlobalSection, GlobalType,
    Instruction, Module, ValType,
};
use wasmparser::{
    CodeSectionReader, ExportSectionReader, FunctionBody, GlobalSectionReader, Operator, Parser,
    Payload, TypeRef, Validator,
};

/// The name the instruction counter is exported under.
pub const COUNTER: &str = "pum_wasm_instructions";

/// `wasm` with an instruction counter (see the module docs); the result is validated.
pub fn instrument(wasm: &[u8]) -> Result<Vec<u8>, String> {
    let global = globals(wasm).map_err(|e| format!("the module does not parse: {e}"))?;
    let mut counter = Counter {
        global,
        added_global: false,
        added_export: false,
    };
    let mut module = Module::new();
    counter
        .parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| format!("the module does not re-encode: {e}"))?;
    if !counter.added_global || !counter.added_export {
        return Err("the module has no global or no export section to add the counter to".into());
    }
    let out = module.finish();
    Validator::new()
        .validate_all(&out)
        .map_err(|e| format!("the instrumented module does not validate: {e}"))?;
    Ok(out)
}

/// The number of globals `wasm` has, imported and defined: the index of one added after them.
fn globals(wasm: &[u8]) -> Result<u32, wasmparser::BinaryReaderError> {
    let mut n = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    if matches!(import?.ty, TypeRef::Global(_)) {
                        n += 1;
                    }
                }
            }
            Payload::GlobalSection(section) => n += section.count(),
            _ => {}
        }
    }
    Ok(n)
}

/// Whether `op` ends a straight-line run: the next instruction may be reached otherwise than
/// from it.
fn ends_run(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Else
            | Operator::End
            | Operator::Br { .. }
            | Operator::BrIf { .. }
            | Operator::BrTable { .. }
            | Operator::Return
            | Operator::Unreachable
            | Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::Delegate { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
    )
}

struct Counter {
    /// The counter's global index.
    global: u32,
    added_global: bool,
    added_export: bool,
}

impl Counter {
    /// Adds `n` to the counter.
    fn add(&self, f: &mut Function, n: usize) {
        f.instruction(&Instruction::GlobalGet(self.global))
            .instruction(&Instruction::I64Const(n as i64))
            .instruction(&Instruction::I64Add)
            .instruction(&Instruction::GlobalSet(self.global));
    }
}

impl Reencode for Counter {
    type Error = Infallible;

    fn parse_global_section(
        &mut self,
        globals: &mut GlobalSection,
        section: GlobalSectionReader<'_>,
    ) -> Result<(), Error<Infallible>> {
        utils::parse_global_section(self, globals, section)?;
        let ty = GlobalType {
            val_type: ValType::I64,
            mutable: true,
            shared: false,
        };
        globals.global(ty, &ConstExpr::i64_const(0));
        self.added_global = true;
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: ExportSectionReader<'_>,
    ) -> Result<(), Error<Infallible>> {
        utils::parse_export_section(self, exports, section)?;
        exports.export(COUNTER, ExportKind::Global, self.global);
        self.added_export = true;
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: CodeSectionReader<'_>,
    ) -> Result<(), Error<Infallible>> {
        utils::parse_code_section(self, code, section)
    }

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        func: FunctionBody<'_>,
    ) -> Result<(), Error<Infallible>> {
        let mut f = self.new_function_with_parsed_locals(&func)?;
        let mut reader = func.get_operators_reader()?;
        let mut ops = Vec::new();
        while !reader.eof() {
            ops.push(reader.read()?);
        }
        let mut start = 0;
        for i in 0..ops.len() {
            // A function's code ends with `end`, which ends the last run.
            if ends_run(&ops[i]) || i + 1 == ops.len() {
                self.add(&mut f, i + 1 - start);
                for op in &ops[start..=i] {
                    f.instruction(&self.instruction(op.clone())?);
                }
                start = i + 1;
            }
        }
        code.function(&f);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{BlockType, FunctionSection, TypeSection};

    /// A module with two globals and one function of `body`, exported.
    fn module(body: &[Instruction<'_>]) -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([ValType::I32], [ValType::I32]);
        let mut functions = FunctionSection::new();
        functions.function(0);
        let mut globals = GlobalSection::new();
        for _ in 0..2 {
            let ty = GlobalType {
                val_type: ValType::I32,
                mutable: true,
                shared: false,
            };
            globals.global(ty, &ConstExpr::i32_const(0));
        }
        let mut exports = ExportSection::new();
        exports.export("f", ExportKind::Func, 0);
        let mut f = Function::new([]);
        for i in body {
            f.instruction(i);
        }
        let mut code = CodeSection::new();
        code.function(&f);
        let mut m = Module::new();
        m.section(&types)
            .section(&functions)
            .section(&globals)
            .section(&exports)
            .section(&code);
        m.finish()
    }

    /// The function's operators, and the amounts its counter increments add, in order.
    fn read(wasm: &[u8], counter: u32) -> (Vec<String>, Vec<i64>) {
        let mut ops = Vec::new();
        let mut adds = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            if let Payload::CodeSectionEntry(body) = payload.expect("parses") {
                let all: Vec<Operator<'_>> = body
                    .get_operators_reader()
                    .expect("operators")
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .expect("reads");
                let mut i = 0;
                while i < all.len() {
                    if matches!(all[i], Operator::GlobalGet { global_index } if global_index == counter)
                    {
                        let Operator::I64Const { value } = all[i + 1] else {
                            panic!("an increment is global.get, i64.const, i64.add, global.set");
                        };
                        adds.push(value);
                        i += 4;
                    } else {
                        ops.push(format!("{:?}", all[i]));
                        i += 1;
                    }
                }
            }
        }
        (ops, adds)
    }

    #[test]
    fn every_instruction_is_counted_once_at_the_start_of_its_run() {
        // A loop that counts its argument down to zero, in a block.
        let body = [
            Instruction::Block(BlockType::Empty),
            Instruction::Loop(BlockType::Empty),
            Instruction::LocalGet(0),
            Instruction::I32Eqz,
            Instruction::BrIf(1),
            Instruction::LocalGet(0),
            Instruction::I32Const(1),
            Instruction::I32Sub,
            Instruction::LocalSet(0),
            Instruction::Br(0),
            Instruction::End,
            Instruction::End,
            Instruction::GlobalGet(1),
            Instruction::End,
        ];
        let original = module(&body);
        let counted = instrument(&original).expect("instruments");
        let (ops, adds) = read(&counted, 2);
        let (before, none) = read(&original, 2);
        assert!(none.is_empty());
        assert_eq!(ops, before, "the code itself is unchanged");
        // Runs: [block], [loop], [get, eqz, br_if], [get, const, sub, set, br], [end], [end],
        // [global.get, end].
        assert_eq!(adds, [1, 1, 3, 5, 1, 1, 2]);
        assert_eq!(adds.iter().sum::<i64>(), body.len() as i64);
        let exported = Parser::new(0).parse_all(&counted).any(|p| match p {
            Ok(Payload::ExportSection(s)) => s.into_iter().any(|e| {
                let e = e.expect("export");
                e.name == COUNTER && e.kind == wasmparser::ExternalKind::Global && e.index == 2
            }),
            _ => false,
        });
        assert!(exported, "the counter is exported");
    }
}
