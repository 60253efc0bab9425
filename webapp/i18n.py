"""Interface languages: English and Russian.

Static labels go through Gradio's `gr.I18n` (`I18N(key)`), which the browser translates from its
own language. Messages built on the server (status lines, errors, reports) are translated here with
`t(lang, key, **values)`, the language taken from the request's Accept-Language header. Both use the
same tables, and every key exists in every language (a test checks it).
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr

LANGUAGES = ("en", "ru")
DEFAULT = "en"

EN: dict[str, str] = {
    # page
    "app.intro": "Train a small GPT on your own text, watch it learn, generate with PyTorch, onnxruntime or in your own browser, export it to ONNX.",
    "tab.train": "Train",
    "tab.generate": "Generate",
    "tab.models": "Models",
    # train tab
    "train.source": "Training text",
    "train.source_upload": "Upload files",
    "train.source_sample": "Built-in sample",
    "train.files": "Text files (.txt, .md; UTF-8)",
    "train.sample": "Sample corpus",
    "sample.python-stdlib": "Python standard library (built in)",
    "sample.shakespeare": "Shakespeare (a 200 KB excerpt)",
    "train.preset": "Model preset",
    "train.start_from": "Start from",
    "train.start_new": "A new model",
    "train.start_current": "The current model",
    "train.start_saved": "A saved model",
    "train.start_model": "Saved model to train further",
    "train.start_info": "Going on from a model keeps its shape and tokenizer: the model settings below do not apply.",
    "preset.tiny": "Tiny (137 K parameters, about a minute)",
    "preset.small": "Small (1.1 M parameters)",
    "preset.medium": "Medium (3.5 M parameters)",
    "train.advanced": "Advanced settings",
    "train.layers": "Layers",
    "train.heads": "Attention heads",
    "train.emb": "Embedding width",
    "train.context": "Context (tokens)",
    "train.vocab": "Vocabulary size",
    "train.lr": "Learning rate",
    "train.batch": "Batch size",
    "train.steps": "Steps",
    "train.dropout": "Dropout",
    "train.device": "Device",
    "train.start": "Train",
    "train.stop": "Stop",
    "train.resume": "Resume",
    "train.status": "Status",
    "train.plot": "Loss",
    "train.sample_box": "Sample from the model",
    "train.idle": "Choose text and a preset, then press **Train**.",
    "train.preparing": "Training the tokenizer and preparing the data…",
    "train.progress": "Training",
    "train.header": "**Data:** {corpus} · {tokens} tokens · **model:** {params} parameters, vocabulary {vocab}, context {context}",
    "train.starting": "Starting…",
    "train.step": "**Step {step} / {total}**",
    "train.loss": "loss {loss}",
    "train.val_loss": "validation {loss}",
    "train.speed": "{rate} tokens/s",
    "train.elapsed": "elapsed {time}",
    "train.eta": "ETA {time}",
    "train.finished": "**Finished** at step {step}. The model is ready in **Generate** and **Models**.",
    "train.stopped": "**Stopped** at step {step}; its checkpoint is kept. Press **Resume** to continue.",
    "train.time_limit": "**Stopped** at step {step}: the {minutes}-minute limit of one run. Press **Resume** to continue.",
    "train.failed": "**Training failed:** {error}. The model is back at its last checkpoint.",
    "train.failed_kept": "**Training failed:** {error}. The run had no checkpoint yet: the previous model is kept.",
    "train.stopped_kept": "**Stopped** before the first checkpoint: the previous model is kept.",
    "train.nothing_running": "Nothing is training.",
    "train.sample_at": "[step {step}]",
    "plot.train": "train",
    "plot.validation": "validation",
    "plot.earlier": "before this run",
    # generate tab
    "gen.prompt": "Prompt",
    "gen.max_new_tokens": "Max new tokens",
    "gen.mode": "Decoding",
    "gen.mode_greedy": "Greedy",
    "gen.mode_sampling": "Sampling",
    "gen.preset": "Sampling preset",
    "gen.preset_custom": "Custom",
    "gen.preset_precise": "Precise",
    "gen.preset_creative": "Creative",
    "gen.preset_code": "Code",
    "gen.temperature": "Temperature",
    "gen.top_k": "Top-k (0 = off)",
    "gen.top_p": "Top-p (1 = off)",
    "gen.min_p": "Min-p (0 = off)",
    "gen.repetition_penalty": "Repetition penalty",
    "gen.stop_strings": "Stop strings (one per line; \\n = newline)",
    "gen.seed": "Seed (empty = random)",
    "gen.backend": "Backend",
    "gen.unavailable": "Unavailable here: {items}",
    "reason.no_ort": "onnxruntime is not installed",
    "reason.no_cpu_provider": "this onnxruntime build has no CPU provider",
    "reason.no_cuda_provider": "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)",
    "reason.no_gpu": "no NVIDIA GPU found on this machine",
    "reason.cuda_failed": "the CUDA provider does not start here ({detail})",
    "reason.torch_no_cuda": "PyTorch sees no CUDA GPU (no GPU, or a CPU-only torch build)",
    "gen.generate": "Generate",
    "gen.stop": "Stop",
    "gen.compare": "Compare backends",
    "gen.output": "Output",
    "gen.stats": "Speed",
    "gen.compare_report": "Backend comparison",
    "gen.exporting": "Exporting the model to ONNX for onnxruntime (once per model)…",
    "gen.streaming": " · generating…",
    "gen.tokens": "{tokens} tokens",
    "gen.rate": "**{rate} tokens/s**",
    "gen.first_token": "first token after {ms} ms",
    "gen.backend_used": "{backend} · provider: `{provider}`",
    "gen.seed_used": "seed {seed}",
    "cmp.headline": "**Max logit difference:** {diff} · **greedy tokens:** {agree} · {provider}, {precision}",
    "cmp.agree": "agree ({steps} of {steps})",
    "cmp.differ": "differ from new token {position}",
    "cmp.pass": "**PASS**: within the tolerance of this precision.",
    "cmp.fail": "**FAIL**: outside the tolerance of this precision.",
    # models tab
    "model.current": "Current model",
    "model.none": "No model yet: train one, or load or upload a saved one.",
    "model.summary": "**{label}** · parameters: {params} · layers: {layers} · heads: {heads} · width {emb} · context {context} · vocabulary {vocab} · {device}",
    "model.trained_on": "trained on {corpus}",
    "model.continued": "{base}, trained further on {corpus}",
    "model.saved_models": "Saved models",
    "model.refresh": "Refresh",
    "model.load": "Load",
    "model.download": "Download zip",
    "model.download_file": "Model zip",
    "model.save_name": "Save the current model as",
    "model.save": "Save",
    "model.upload": "Upload a checkpoint zip (config.json, model.safetensors, tokenizer.json)",
    "model.upload_button": "Upload and load",
    "model.message": "Message",
    "model.loaded": "Loaded {name}.",
    "model.saved": "Saved as {name}.",
    "model.uploaded": "Uploaded and loaded as {name}.",
    "export.title": "Export to ONNX",
    "export.precision": "Precision",
    "export.button": "Export",
    "export.file": "ONNX zip (model.onnx, config, tokenizer, genai_config, report)",
    "export.report_label": "Parity report",
    "export.running": "Exporting and checking parity… {seconds} s",
    "export.zipping": "Zipping…",
    "export.report": "**{precision}**, opset {opset}, {seconds} s, {size} MB · **max logit difference:** {diff} · **greedy tokens:** {greedy} · {verdict}",
    # errors
    "error.title": "Error",
    "error.invalid": "Invalid input: {detail}",
    "error.internal": "Something went wrong on the server ({detail}). Your session is unchanged; please try again.",
    "error.browser_backend": "This backend runs in your browser: pick it in the app's Generate tab (the API cannot run it).",
    "error.no_web_page": "This export has no page a browser can run.",
    "gen.browser_generate": "Generate in your browser",
    "gen.browser_precision": "Model downloaded to your browser",
    "look.title": "Why it wrote this",
    "look.view": "Each token coloured by surprise: the redder, the less the model expected it",
    "look.hint": "Click a token to see how likely it was and what else the model considered.",
    "look.none": "Generate some text first: its tokens then show here, coloured by probability.",
    "look.chosen": "**`{token}`** had probability {p}. The model's five most likely tokens at that step:",
    "eval.surprise": "The text coloured by surprise (first 2,000 tokens): the redder, the less the model expected it",
    "eval.title": "Evaluate on a text",
    "eval.model": "Model",
    "eval.current": "The current model",
    "eval.saved": "The saved model chosen above",
    "eval.text": "Text to score (pasted)",
    "eval.file": "…or a text file (.txt / .md)",
    "eval.button": "Evaluate",
    "eval.results": "Results (newest first): lower is better; per byte compares models with different tokenizers",
    "eval.done": "**{model}** on {text}: {nats} nats per byte ({bits} bits per byte), perplexity {ppl}.",
    "eval.col_model": "model",
    "eval.col_text": "text",
    "eval.col_tokens": "tokens",
    "eval.col_loss": "loss per token",
    "eval.col_perplexity": "perplexity",
    "eval.col_nats_per_byte": "nats per byte",
    "eval.col_bits_per_byte": "bits per byte",
    "error.eval_no_text": "Paste a text or upload a text file to evaluate on.",
    "error.no_files": "No file given: upload at least one file.",
    "error.file_type": "{name}: unsupported file type; expected {allowed}.",
    "error.file_too_big": "{name} is {size} MB, over the {limit} MB limit.",
    "error.text_too_big": "The files together exceed the {limit} MB limit for training text.",
    "error.file_empty": "{name} is empty.",
    "error.file_binary": "{name} looks like a binary file, not text.",
    "error.file_not_utf8": "{name} is not valid UTF-8 (at byte {position}); save it as UTF-8 text.",
    "error.unknown_sample": "Unknown sample corpus {name!r}; available: {choices}.",
    "error.no_stdlib": "No Python standard-library sources found in {folder}.",
    "error.text_too_short": "The text is too short: {tokens} tokens after tokenization, at least {needed} are needed for context {context} and batch {batch}. Add text, or lower the context or the batch size.",
    "error.too_many_steps": "{steps} steps is over this server's limit of {limit}.",
    "error.too_many_params": "The model would have {params} parameters, over this server's limit of {limit}. Make it smaller.",
    "error.heads_divide": "The embedding width ({emb}) must be divisible by the number of heads ({heads}).",
    "error.bad_value": "{name} = {value!r} is not valid (expected {rule}).",
    "error.bad_sampling": "Invalid generation settings: {detail}",
    "error.device_unavailable": "Device {device} is not available here: {reason}",
    "error.backend_unavailable": "{backend} is not available here: {reason}",
    "error.already_training": "A training run of this session is already running: stop it first.",
    "error.nothing_to_resume": "There is no stopped run to resume in this session: start a training first.",
    "error.resume_done": "The run is already at step {step}: set Steps higher to continue it.",
    "error.busy_training": "The model is training: stop the training (or wait for it) first.",
    "error.no_model": "There is no model yet: train one, or load or upload a saved model first.",
    "error.no_tokenizer": "This model has no tokenizer, so it cannot turn text into tokens.",
    "error.pick_model": "Choose a saved model first.",
    "error.no_such_model": "There is no saved model called {name!r}.",
    "error.no_name": "Enter a name for the model.",
    "error.name_taken": "A saved model called {name!r} already exists: choose another name.",
    "error.bad_checkpoint": "This is not a usable checkpoint: {detail}",
    "error.not_a_zip": "The file is not a zip archive (or it is damaged).",
    "error.zip_entries": "The zip holds {count} entries, more than the {limit} allowed.",
    "error.zip_too_big": "The zip unpacks to more than {limit} MB: refused.",
    "error.zip_duplicate": "The zip holds {name} more than once.",
    "error.zip_link": "The zip entry {name!r} is a link: refused.",
    "error.zip_slip": "The zip entry {name!r} points outside its folder: refused.",
    "error.zip_corrupt": "The zip is damaged: {detail}",
    "error.zip_missing": "The zip lacks {names}.",
    "error.export_failed": "The ONNX export failed: {detail}",
    "error.too_much_memory": "This run would need {estimate}, over this server's training memory budget of {limit} MB. Lower {lower}.",
    "lower.activations": "the batch size or the context (activations and logits grow with both)",
    "lower.model": "the model size (layers, embedding width) or the vocabulary",
    "error.text_field_too_long": "{name} is {chars} characters long, over the limit of {limit}.",
    "error.session_disk": "This needs about {need} MB of disk, and this session's limit is {limit} MB even after removing its older runs and exports. Make the model smaller.",
    "error.disk_full": "The server's disk is nearly full ({free} MB free, {limit} MB must stay free). Please try again later.",
    "error.too_many_saved": "This server already holds {count} saved models, its limit. Ask its owner to remove some, or download yours instead.",
    "error.saved_full": "Saved models already use {used} MB; this one ({need} MB) would pass the {limit} MB limit. Download it instead.",
}

RU: dict[str, str] = {
    "app.intro": "Обучите маленькую GPT на своём тексте, смотрите, как она учится, генерируйте через PyTorch, onnxruntime или прямо в браузере, экспортируйте в ONNX.",
    "tab.train": "Обучение",
    "tab.generate": "Генерация",
    "tab.models": "Модели",
    "train.source": "Текст для обучения",
    "train.source_upload": "Загрузить файлы",
    "train.source_sample": "Встроенный пример",
    "train.files": "Текстовые файлы (.txt, .md; UTF-8)",
    "train.sample": "Пример корпуса",
    "sample.python-stdlib": "Стандартная библиотека Python (встроена)",
    "sample.shakespeare": "Шекспир (отрывок, 200 КБ)",
    "train.preset": "Размер модели",
    "train.start_from": "С чего начать",
    "train.start_new": "Новая модель",
    "train.start_current": "Текущая модель",
    "train.start_saved": "Сохранённая модель",
    "train.start_model": "Сохранённая модель для дообучения",
    "train.start_info": "Дообучение сохраняет форму модели и её токенизатор: настройки модели ниже не применяются.",
    "preset.tiny": "Крошечная (137 тыс. параметров, около минуты)",
    "preset.small": "Маленькая (1,1 млн параметров)",
    "preset.medium": "Средняя (3,5 млн параметров)",
    "train.advanced": "Дополнительные настройки",
    "train.layers": "Слои",
    "train.heads": "Головы внимания",
    "train.emb": "Ширина эмбеддинга",
    "train.context": "Контекст (токены)",
    "train.vocab": "Размер словаря",
    "train.lr": "Скорость обучения",
    "train.batch": "Размер батча",
    "train.steps": "Шаги",
    "train.dropout": "Dropout",
    "train.device": "Устройство",
    "train.start": "Обучить",
    "train.stop": "Остановить",
    "train.resume": "Продолжить",
    "train.status": "Состояние",
    "train.plot": "Потери",
    "train.sample_box": "Пример текста от модели",
    "train.idle": "Выберите текст и размер модели, затем нажмите **Обучить**.",
    "train.preparing": "Обучаю токенизатор и готовлю данные…",
    "train.progress": "Обучение",
    "train.header": "**Данные:** {corpus} · токенов: {tokens} · **модель:** параметров: {params}, словарь {vocab}, контекст {context}",
    "train.starting": "Запуск…",
    "train.step": "**Шаг {step} / {total}**",
    "train.loss": "потери {loss}",
    "train.val_loss": "валидация {loss}",
    "train.speed": "{rate} токенов/с",
    "train.elapsed": "прошло {time}",
    "train.eta": "осталось {time}",
    "train.finished": "**Готово** на шаге {step}. Модель доступна во вкладках **Генерация** и **Модели**.",
    "train.stopped": "**Остановлено** на шаге {step}; контрольная точка сохранена. Нажмите **Продолжить**, чтобы продолжить.",
    "train.time_limit": "**Остановлено** на шаге {step}: лимит одного запуска — {minutes} мин. Нажмите **Продолжить**, чтобы продолжить.",
    "train.failed": "**Обучение прервалось с ошибкой:** {error}. Модель возвращена к последней контрольной точке.",
    "train.failed_kept": "**Обучение прервалось с ошибкой:** {error}. Контрольных точек ещё не было: прежняя модель сохранена.",
    "train.stopped_kept": "**Остановлено** до первой контрольной точки: прежняя модель сохранена.",
    "train.nothing_running": "Сейчас ничего не обучается.",
    "train.sample_at": "[шаг {step}]",
    "plot.train": "обучение",
    "plot.validation": "валидация",
    "plot.earlier": "до этого запуска",
    "gen.prompt": "Начало текста (промпт)",
    "gen.max_new_tokens": "Макс. новых токенов",
    "gen.mode": "Декодирование",
    "gen.mode_greedy": "Жадное",
    "gen.mode_sampling": "Сэмплирование",
    "gen.preset": "Набор параметров",
    "gen.preset_custom": "Свой",
    "gen.preset_precise": "Точные ответы",
    "gen.preset_creative": "Творческий текст",
    "gen.preset_code": "Код",
    "gen.temperature": "Температура",
    "gen.top_k": "Top-k (0 = выкл.)",
    "gen.top_p": "Top-p (1 = выкл.)",
    "gen.min_p": "Min-p (0 = выкл.)",
    "gen.repetition_penalty": "Штраф за повторы",
    "gen.stop_strings": "Стоп-строки (по одной в строке; \\n = перевод строки)",
    "gen.seed": "Seed (пусто = случайный)",
    "gen.backend": "Бэкенд",
    "gen.unavailable": "Здесь недоступно: {items}",
    "reason.no_ort": "onnxruntime не установлен",
    "reason.no_cpu_provider": "в этой сборке onnxruntime нет CPU-провайдера",
    "reason.no_cuda_provider": "в этой сборке onnxruntime нет CUDA-провайдера (установите onnxruntime-gpu)",
    "reason.no_gpu": "на этой машине нет GPU NVIDIA",
    "reason.cuda_failed": "CUDA-провайдер здесь не запускается ({detail})",
    "reason.torch_no_cuda": "PyTorch не видит GPU с CUDA (GPU нет или сборка torch только для CPU)",
    "gen.generate": "Сгенерировать",
    "gen.stop": "Остановить",
    "gen.compare": "Сравнить бэкенды",
    "gen.output": "Результат",
    "gen.stats": "Скорость",
    "gen.compare_report": "Сравнение бэкендов",
    "gen.exporting": "Экспортирую модель в ONNX для onnxruntime (один раз на модель)…",
    "gen.streaming": " · идёт генерация…",
    "gen.tokens": "токенов: {tokens}",
    "gen.rate": "**{rate} токенов/с**",
    "gen.first_token": "первый токен через {ms} мс",
    "gen.backend_used": "{backend} · провайдер: `{provider}`",
    "gen.seed_used": "seed {seed}",
    "cmp.headline": "**Макс. разница логитов:** {diff} · **жадные токены:** {agree} · {provider}, {precision}",
    "cmp.agree": "совпадают ({steps} из {steps})",
    "cmp.differ": "расходятся с нового токена {position}",
    "cmp.pass": "**PASS**: в пределах допуска для этой точности.",
    "cmp.fail": "**FAIL**: вне допуска для этой точности.",
    "model.current": "Текущая модель",
    "model.none": "Модели пока нет: обучите её либо загрузите сохранённую.",
    "model.summary": "**{label}** · параметров: {params} · слоёв: {layers} · голов: {heads} · ширина {emb} · контекст {context} · словарь {vocab} · {device}",
    "model.trained_on": "обучена на: {corpus}",
    "model.continued": "{base}, дообучена на: {corpus}",
    "model.saved_models": "Сохранённые модели",
    "model.refresh": "Обновить",
    "model.load": "Загрузить",
    "model.download": "Скачать zip",
    "model.download_file": "Архив модели",
    "model.save_name": "Сохранить текущую модель под именем",
    "model.save": "Сохранить",
    "model.upload": "Загрузить zip с контрольной точкой (config.json, model.safetensors, tokenizer.json)",
    "model.upload_button": "Загрузить и открыть",
    "model.message": "Сообщение",
    "model.loaded": "Загружена модель {name}.",
    "model.saved": "Сохранено как {name}.",
    "model.uploaded": "Загружено и открыто как {name}.",
    "export.title": "Экспорт в ONNX",
    "export.precision": "Точность",
    "export.button": "Экспортировать",
    "export.file": "Архив ONNX (model.onnx, конфигурация, токенизатор, genai_config, отчёт)",
    "export.report_label": "Отчёт о совпадении",
    "export.running": "Экспорт и проверка совпадения… {seconds} с",
    "export.zipping": "Упаковываю…",
    "export.report": "**{precision}**, opset {opset}, {seconds} с, {size} МБ · **макс. разница логитов:** {diff} · **жадные токены:** {greedy} · {verdict}",
    "error.title": "Ошибка",
    "error.invalid": "Неверные данные: {detail}",
    "error.internal": "Ошибка на сервере ({detail}). Ваш сеанс не изменился; попробуйте ещё раз.",
    "error.browser_backend": "Этот бэкенд работает в вашем браузере: выберите его на вкладке генерации (через API он недоступен).",
    "error.no_web_page": "В этом экспорте нет страницы, которую может запустить браузер.",
    "gen.browser_generate": "Сгенерировать в браузере",
    "gen.browser_precision": "Модель, загружаемая в браузер",
    "look.title": "Почему модель это написала",
    "look.view": "Токены окрашены по неожиданности: чем краснее, тем меньше модель его ждала",
    "look.hint": "Нажмите на токен, чтобы увидеть его вероятность и другие варианты модели.",
    "look.none": "Сначала сгенерируйте текст: его токены появятся здесь, окрашенные по вероятности.",
    "look.chosen": "**`{token}`**: вероятность {p}. Пять самых вероятных токенов модели на этом шаге:",
    "eval.surprise": "Текст, окрашенный по неожиданности (первые 2000 токенов): чем краснее, тем меньше модель его ждала",
    "eval.title": "Оценка на тексте",
    "eval.model": "Модель",
    "eval.current": "Текущая модель",
    "eval.saved": "Сохранённая модель, выбранная выше",
    "eval.text": "Текст для оценки (вставьте)",
    "eval.file": "…или текстовый файл (.txt / .md)",
    "eval.button": "Оценить",
    "eval.results": "Результаты (новые сверху): меньше — лучше; «на байт» сравнивает модели с разными токенизаторами",
    "eval.done": "**{model}** на тексте {text}: {nats} нат на байт ({bits} бит на байт), перплексия {ppl}.",
    "eval.col_model": "модель",
    "eval.col_text": "текст",
    "eval.col_tokens": "токенов",
    "eval.col_loss": "потери на токен",
    "eval.col_perplexity": "перплексия",
    "eval.col_nats_per_byte": "нат на байт",
    "eval.col_bits_per_byte": "бит на байт",
    "error.eval_no_text": "Вставьте текст или загрузите текстовый файл для оценки.",
    "error.no_files": "Файл не выбран: загрузите хотя бы один файл.",
    "error.file_type": "{name}: неподдерживаемый тип файла; ожидается {allowed}.",
    "error.file_too_big": "{name} занимает {size} МБ, это больше лимита {limit} МБ.",
    "error.text_too_big": "Файлы вместе превышают лимит {limit} МБ для текста обучения.",
    "error.file_empty": "Файл {name} пуст.",
    "error.file_binary": "{name} похож на двоичный файл, а не на текст.",
    "error.file_not_utf8": "{name} не в кодировке UTF-8 (байт {position}); сохраните его как текст UTF-8.",
    "error.unknown_sample": "Неизвестный пример корпуса {name!r}; доступны: {choices}.",
    "error.no_stdlib": "В {folder} не найдены исходники стандартной библиотеки Python.",
    "error.text_too_short": "Текст слишком короткий: после токенизации токенов {tokens}, а для контекста {context} и батча {batch} нужно не меньше {needed}. Добавьте текст или уменьшите контекст либо размер батча.",
    "error.too_many_steps": "Шагов: {steps} — больше лимита этого сервера ({limit}).",
    "error.too_many_params": "У модели было бы {params} параметров, это больше лимита сервера ({limit}). Уменьшите её.",
    "error.heads_divide": "Ширина эмбеддинга ({emb}) должна делиться на число голов ({heads}).",
    "error.bad_value": "{name} = {value!r} — недопустимое значение (ожидается {rule}).",
    "error.bad_sampling": "Неверные настройки генерации: {detail}",
    "error.device_unavailable": "Устройство {device} здесь недоступно: {reason}",
    "error.backend_unavailable": "{backend} здесь недоступен: {reason}",
    "error.already_training": "В этом сеансе уже идёт обучение: сначала остановите его.",
    "error.nothing_to_resume": "В этом сеансе нет остановленного обучения: сначала запустите обучение.",
    "error.resume_done": "Обучение уже на шаге {step}: увеличьте число шагов, чтобы продолжить.",
    "error.busy_training": "Модель обучается: сначала остановите обучение (или дождитесь конца).",
    "error.no_model": "Модели ещё нет: обучите её либо загрузите сохранённую.",
    "error.no_tokenizer": "У этой модели нет токенизатора, она не может превратить текст в токены.",
    "error.pick_model": "Сначала выберите сохранённую модель.",
    "error.no_such_model": "Сохранённой модели {name!r} нет.",
    "error.no_name": "Введите имя модели.",
    "error.name_taken": "Модель с именем {name!r} уже есть: выберите другое имя.",
    "error.bad_checkpoint": "Это не пригодная контрольная точка: {detail}",
    "error.not_a_zip": "Файл не является zip-архивом (или повреждён).",
    "error.zip_entries": "Записей в архиве: {count}, больше допустимых {limit}.",
    "error.zip_too_big": "Архив распаковывается больше чем в {limit} МБ: отклонён.",
    "error.zip_duplicate": "В архиве {name} встречается несколько раз.",
    "error.zip_link": "Запись архива {name!r} — ссылка: отклонено.",
    "error.zip_slip": "Запись архива {name!r} указывает за пределы своей папки: отклонено.",
    "error.zip_corrupt": "Архив повреждён: {detail}",
    "error.zip_missing": "В архиве нет {names}.",
    "error.export_failed": "Экспорт в ONNX не удался: {detail}",
    "error.too_much_memory": "Этому обучению понадобится {estimate} — больше бюджета памяти сервера для обучения ({limit} МБ). Уменьшите {lower}.",
    "lower.activations": "размер батча или контекст (активации и логиты растут с обоими)",
    "lower.model": "размер модели (число слоёв, ширину эмбеддинга) или словарь",
    "error.text_field_too_long": "{name}: {chars} символов, больше лимита {limit}.",
    "error.session_disk": "Нужно около {need} МБ диска, а лимит этого сеанса — {limit} МБ даже после удаления его старых обучений и экспортов. Уменьшите модель.",
    "error.disk_full": "Диск сервера почти заполнен (свободно {free} МБ, должно оставаться {limit} МБ). Попробуйте позже.",
    "error.too_many_saved": "На сервере уже {count} сохранённых моделей — это лимит. Попросите владельца удалить лишние или скачайте свою модель.",
    "error.saved_full": "Сохранённые модели уже занимают {used} МБ; эта ({need} МБ) превысит лимит {limit} МБ. Скачайте её вместо сохранения.",
}

TABLES = {"en": EN, "ru": RU}
I18N = gr.I18n(**TABLES)


def t(lang: str, key: str, **values: Any) -> str:
    """The message `key` in `lang` (English when missing), formatted with `values`; values that are
    `Msg`s are translated into the same language, and text values lose their server paths."""
    table = TABLES.get(lang, EN)
    template = table.get(key) or EN[key]
    if not values:
        return template
    return template.format(**{k: _value(v, lang) for k, v in values.items()})


def without_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part: users never see the server's folders
    (the log keeps them). "/srv/artifacts/sessions/1/x/config.json: bad" -> "config.json: bad"."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "/", text)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/])/(?:[^\s'\"()<>:,;/]+/)*([^\s'\"()<>:,;/]*)")


def _value(value: Any, lang: str) -> Any:
    if isinstance(value, Msg):
        return value.message(lang)
    if isinstance(value, str):
        return without_paths(value)
    return value


class Msg:
    """A message to translate later, in whatever language the reader has: `Msg(key, **values)`."""

    def __init__(self, key: str, **values: Any) -> None:
        self.key = key
        self.values = values

    def message(self, lang: str) -> str:
        return t(lang, self.key, **self.values)

    def __str__(self) -> str:
        return self.message(DEFAULT)


def language(accept_language: str) -> str:
    """The best supported language of an Accept-Language header (e.g. "ru-RU,ru;q=0.9,en;q=0.8")."""
    best, best_q = DEFAULT, -1.0
    for position, item in enumerate(accept_language.split(",")):
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().split("-")[0].lower()
        if primary not in LANGUAGES:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        q -= position * 1e-6  # ties: the earlier one wins
        if q > best_q:
            best, best_q = primary, q
    return best


class UserError(Msg, ValueError):
    """A problem the user can fix, with a message in every language: `UserError(key, **values)`."""

    def __init__(self, key: str, **values: Any) -> None:
        Msg.__init__(self, key, **values)
        ValueError.__init__(self, t(DEFAULT, key, **values))

    def __str__(self) -> str:
        return ValueError.__str__(self)
