"""simple-llm's web app: a Gradio interface over `gpt` and `export`.

`python webapp/app.py` serves it; `webapp.app.build_demo(settings)` builds it for tests and
embedding. One job per module: `settings` (environment variables), `i18n` (English and Russian),
`corpus` (uploads and built-in samples), `archive` (safe zips), `backends` (what runs here),
`sessions` (per-browser state), `training` (runs in a worker thread), `generation`, `owners` (who
owns a saved model), `library` (saved models by owner: visibility, caps, expiry), `models` (loading,
saving, zips and ONNX exports), `services` (what every tab shares: sessions, admission, disk,
owners, translated errors), and one module per tab with its layout, events and handlers
(`ui_train`, `ui_generate`, `ui_models`).
"""
