/** The text side of a model (tokenizer, chat template, detokenizer, stop strings): used by the gateway and `dsr chat`. */
export { loadTextModel, type TextModel, type ChatMessage, type GenerationDefaults } from "./model.js";
export { createStopMatcher, type StopMatcher } from "./stop.js";
export { createIncrementalDecoder, type IncrementalDecoder } from "./decoder.js";
export { ReasoningSplitter, splitReasoning, type ReasoningSplitterOptions } from "./reasoning.js";
export { tokenByteTable, type TokenByteTable } from "./token-bytes.js";
