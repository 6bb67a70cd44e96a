// Parse an AsyncAPI document with the official parser; print every error; exit 1 on any.
import { Parser, fromFile } from '@asyncapi/parser';
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, process.argv[2]).parse();
const errors = diagnostics.filter(d => d.severity === 0);
for (const d of errors) console.log(JSON.stringify({path: d.path.join('.'), message: d.message}));
console.log(`errors: ${errors.length}, warnings: ${diagnostics.length - errors.length}, parsed: ${document !== undefined}`);
process.exit(errors.length || document === undefined ? 1 : 0);
