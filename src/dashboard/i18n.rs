//! The dashboard's labels in Russian (the default) and English, chosen by
//! the browser's `Accept-Language`.

/// A page's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ru,
    En,
}

/// (key, Russian, English).
const LABELS: &[(&str, &str, &str)] = &[
    ("title", "docfetch — панель", "docfetch — dashboard"),
    ("overview", "Обзор", "Overview"),
    ("jobs", "Задания", "Jobs"),
    ("accounts", "Учётные записи", "Accounts"),
    ("schedules", "Расписания", "Schedules"),
    ("submit", "Новое задание", "Submit"),
    ("logout", "Выйти", "Log out"),
    ("login", "Войти", "Log in"),
    ("token", "Токен API", "API token"),
    (
        "login_hint",
        "Токен печатает команда `docfetch api-token`.",
        "`docfetch api-token` prints the token.",
    ),
    ("wrong_token", "Неверный токен.", "Wrong token."),
    (
        "too_many",
        "Слишком много неудачных попыток; подождите минуту.",
        "Too many failed attempts; wait a minute.",
    ),
    ("state", "Состояние", "State"),
    ("provider", "Сервис", "Provider"),
    ("account", "Учётная запись", "Account"),
    ("name", "Имя", "Name"),
    ("operation", "Операция", "Operation"),
    ("created", "Создано", "Created"),
    ("created_from", "Создано с", "Created from"),
    ("created_to", "по", "to"),
    ("next_run", "Следующий шаг", "Next step"),
    ("finished", "Завершено", "Finished"),
    ("any", "любое", "any"),
    ("filter", "Показать", "Filter"),
    ("next_page", "Дальше →", "Next →"),
    ("first_page", "← В начало", "← First page"),
    ("no_jobs", "Заданий нет.", "No jobs."),
    ("count", "Число", "Count"),
    ("by_state", "По состояниям", "By state"),
    (
        "per_hour",
        "Завершено за 24 часа по часам",
        "Finished per hour, last 24 h",
    ),
    ("done", "готово", "done"),
    ("failed", "ошибка", "failed"),
    ("oldest_waiting", "Самое старое ожидающее", "Oldest waiting"),
    ("next_due", "Ближайший шаг", "Next due"),
    ("paused", "Приостановлены", "Paused"),
    ("store_size", "Размер хранилища", "Store size"),
    ("version", "Версия", "Version"),
    ("uptime", "Работает", "Uptime"),
    ("none", "нет", "none"),
    ("request", "Запрос", "Request"),
    ("timeline", "История", "Timeline"),
    (
        "why_next",
        "Почему следующий шаг тогда",
        "Why the next step is then",
    ),
    ("attempts", "Попытки", "Attempts"),
    ("polls", "Опросы", "Polls"),
    ("steps", "Шаги", "Steps"),
    ("cursor", "Курсор", "Cursor"),
    ("deadline", "Крайний срок", "Deadline"),
    ("files", "Файлы", "Files"),
    ("size", "Размер", "Size"),
    ("receipt", "Квитанция", "Receipt"),
    ("hooks", "Обработчики", "Hooks"),
    ("error", "Ошибка", "Error"),
    ("cancel", "Отменить", "Cancel"),
    ("retry", "Повторить", "Retry"),
    (
        "confirm_cancel",
        "Отменить это задание?",
        "Cancel this job?",
    ),
    (
        "confirm_retry",
        "Запустить задание заново?",
        "Run this job again?",
    ),
    ("download", "скачать", "download"),
    ("source", "Источник", "Source"),
    ("in_use", "Занято / предел", "In use / limit"),
    ("pause_until", "Пауза до", "Paused until"),
    ("last_error", "Последняя ошибка", "Last error"),
    ("token_age", "Возраст токена", "Token age"),
    ("cron", "Cron", "Cron"),
    ("zone", "Пояс", "Zone"),
    ("next_firings", "Ближайшие запуски", "Next firings"),
    ("last_firing", "Последний запуск", "Last firing"),
    ("fire_now", "Запустить сейчас", "Fire now"),
    (
        "paste",
        "Вставьте запрос (JSON или TOML)",
        "Paste a request (JSON or TOML)",
    ),
    ("upload", "или выберите файл", "or choose a file"),
    ("format", "Формат", "Format"),
    ("send", "Отправить", "Submit"),
    ("not_found", "Нет такого задания.", "No such job."),
    (
        "store_error",
        "Хранилище не ответило; попробуйте ещё раз.",
        "The store did not answer; try again.",
    ),
    ("live", "обновляется само", "live"),
    ("kind", "Событие", "Event"),
    ("at", "Когда", "At"),
    ("message", "Сообщение", "Message"),
    ("warnings", "Предупреждения", "Warnings"),
    ("running_now", "выполняется сейчас", "running now"),
    ("queued", "в очереди", "queued"),
    ("running", "выполняется", "running"),
    ("waiting", "ожидает", "waiting"),
    ("cancelled", "отменено", "cancelled"),
];

impl Lang {
    /// The first of `ru`/`en` the browser prefers; Russian when neither.
    pub fn from_accept_language(header: Option<&str>) -> Lang {
        let Some(header) = header else {
            return Lang::Ru;
        };
        let mut best = (Lang::Ru, -1.0f32);
        for part in header.split(',') {
            let mut pieces = part.split(';');
            let tag = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = pieces
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let lang = if tag == "ru" || tag.starts_with("ru-") {
                Lang::Ru
            } else if tag == "en" || tag.starts_with("en-") {
                Lang::En
            } else {
                continue;
            };
            if q > best.1 {
                best = (lang, q);
            }
        }
        best.0
    }

    /// The `lang` attribute.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ru => "ru",
            Lang::En => "en",
        }
    }

    /// The label for `key` (the key itself when there is none).
    pub fn t(self, key: &'static str) -> &'static str {
        LABELS
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, ru, en)| match self {
                Lang::Ru => *ru,
                Lang::En => *en,
            })
            .unwrap_or(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russian_unless_english_is_preferred() {
        assert_eq!(Lang::from_accept_language(None), Lang::Ru);
        assert_eq!(Lang::from_accept_language(Some("de-DE")), Lang::Ru);
        assert_eq!(Lang::from_accept_language(Some("en-US,en;q=0.9")), Lang::En);
        assert_eq!(
            Lang::from_accept_language(Some("en;q=0.5, ru;q=0.8")),
            Lang::Ru
        );
        assert_eq!(Lang::En.t("jobs"), "Jobs");
        assert_eq!(Lang::Ru.t("jobs"), "Задания");
    }

    #[test]
    fn every_key_is_unique() {
        for (i, (k, _, _)) in LABELS.iter().enumerate() {
            assert!(
                LABELS.iter().skip(i + 1).all(|(other, _, _)| other != k),
                "{k}"
            );
        }
    }
}
