{#-
  select <columns> from a source that may not exist yet, or may lack some columns.

  `columns` is a list of "name type" strings. A column the source has is cast to the declared
  type; a column it lacks is NULL of that type; a source table that does not exist yields zero
  rows with the declared columns. The marts are therefore always buildable, and a missing or
  renamed column shows up as a failing not_null test, not as a compile error.

  Sources are still declared through source(), so lineage (and Dagster's asset graph) is exact.
-#}
{% macro tolerant_source(source_name, table_name, columns) -%}
  {%- set rel = source(source_name, table_name) -%}
  {%- set existing = {} -%}
  {%- if execute -%}
    {%- set found = adapter.get_relation(database=rel.database, schema=rel.schema, identifier=rel.identifier) -%}
    {%- if found is not none -%}
      {%- for col in adapter.get_columns_in_relation(found) -%}
        {%- do existing.update({col.name | lower: col.data_type}) -%}
      {%- endfor -%}
    {%- endif -%}
  {%- endif -%}
  select
  {%- for spec in columns %}
    {%- set parts = spec.split(' ', 1) %}
    {%- set name = parts[0] %}
    {%- set dtype = parts[1] %}
    {% if name | lower in existing -%}
      try_cast({{ adapter.quote(name) }} as {{ dtype }})
    {%- else -%}
      cast(null as {{ dtype }})
    {%- endif %} as {{ adapter.quote(name) }}{{ "," if not loop.last }}
  {%- endfor %}
  {% if existing %}from {{ rel }}{% else %}where false{% endif %}
{%- endmacro %}


{#- A JSON list of reason codes (ledger) as the warehouse's ';'-joined text; text passes through. -#}
{% macro json_codes(column) -%}
  case
    when {{ column }} is null then null
    when json_valid({{ column }}) and json_type(cast({{ column }} as json)) = 'ARRAY'
      then array_to_string(cast(cast({{ column }} as json) as varchar[]), ';')
    else cast({{ column }} as varchar)
  end
{%- endmacro %}


{#- The market-local day of a naive-UTC instant (independent of the session's TimeZone). -#}
{% macro session_date(column) -%}
  cast(timezone('{{ var("session_tz") }}', timezone('UTC', {{ column }})) as date)
{%- endmacro %}


{#- A text key from several columns (unique tests on composite keys without packages). -#}
{% macro key(columns) -%}
  concat_ws('|', {% for c in columns %}cast({{ c }} as varchar){{ ", " if not loop.last }}{% endfor %})
{%- endmacro %}
