-- Handlebars partials per account: shared fragments ({{> footer}}) and layouts
-- ({{#> base}}…{{/base}} around {{> @partial-block}}).
CREATE TABLE template_partials (
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        text NOT NULL,
    source      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, name)
);
